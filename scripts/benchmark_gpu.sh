#!/usr/bin/env bash
# The GPU benchmark in one command, on a bare CUDA torch machine with no network.
#
#   bash scripts/benchmark_gpu.sh prepare [PYTHON_VERSION...]   # here, with a network: wheels/ for
#                                                               # Linux x86_64, by default Python 3.12
#   bash scripts/benchmark_gpu.sh [benchmark_gpu.py arguments]  # there: install from wheels/, then run
#   BACKENDS="wan-s2v infinitetalk omniavatar" bash scripts/benchmark_gpu.sh   # the three backends
#   bash scripts/benchmark_gpu.sh infinitetalk [its arguments]  # one backend: wan-s2v, infinitetalk,
#                                                               # omniavatar, or all
#
# `prepare` downloads every line of requirements-benchmark.txt (about 60 MB) but those SKIP names
# (SKIP="numpy pillow" leaves the GPU image's own, and 20 MB, out). The second form installs
# requirements-benchmark.txt from wheels/ (WHEELS=<folder> names another; nothing is downloaded:
# --no-index), keeping an installed package whose wheel is not in the folder, unless the
# benchmark's packages import already, then
# runs scripts/benchmark_gpu.py with the arguments given, by default the full and fp8 memory modes,
# quality and fast, every attention kernel the GPU can run; it prints one table per memory mode and
# generation mode and writes benchmark-gpu.json. No weights are needed: the models have the real
# 14B shapes with random weights, and the LoRA is written at random (its cost does not depend on
# the values). BACKENDS (or a first argument naming a backend) picks the benchmarks, by default
# wan-s2v's alone: infinitetalk runs scripts/benchmark_infinitetalk.py (writes
# benchmark-infinitetalk.json), omniavatar scripts/benchmark_omniavatar.py (benchmark-omniavatar.json),
# each by default in the full and fp8 modes; arguments given go to every benchmark chosen. One
# benchmark failing does not stop the others; the exit status is the last failure's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="$ROOT/requirements-benchmark.txt"
WHEELS="${WHEELS:-$ROOT/wheels}"
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == "prepare" ]]; then
    shift
    versions=("$@")
    [[ ${#versions[@]} -gt 0 ]] || versions=(3.12)
    mkdir -p "$WHEELS"
    wanted="$(mktemp)"
    skip="${SKIP:-}"
    grep -v '^#' "$REQUIREMENTS" | grep . | grep -Eiv "^(${skip// /|})==" >"$wanted" || true
    for version in "${versions[@]}"; do
        "$PYTHON" -m pip download --dest "$WHEELS" --no-deps --only-binary=:all: \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_28_x86_64 --python-version "$version" --implementation cp -r "$wanted"
    done
    rm -f "$wanted"
    echo "wheels for Python ${versions[*]} in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry that folder to the GPU machine"
    exit 0
fi

if ! "$PYTHON" -c "import diffusers, transformers, safetensors, ftfy, accelerate" 2>/dev/null; then
    if [[ ! -d "$WHEELS" ]]; then
        echo "the benchmark's packages are not installed and $WHEELS is missing: run" \
             "'bash scripts/benchmark_gpu.sh prepare' on a machine with a network and bring the folder" >&2
        exit 1
    fi
    # the lines whose wheel is in the folder, and those of packages not installed (pip then names what is missing)
    wanted="$(mktemp)"
    "$PYTHON" - "$REQUIREMENTS" "$WHEELS" >"$wanted" <<'PICK'
import importlib.metadata, pathlib, re, sys
canonical = lambda name: re.sub(r"[-_.]+", "_", name).lower()
wheels = {canonical(path.name.split("-")[0]) for path in pathlib.Path(sys.argv[2]).glob("*.whl")}
for line in pathlib.Path(sys.argv[1]).read_text().splitlines():
    name = line.split("==")[0].strip()
    if not name or name.startswith("#"):
        continue
    try:
        importlib.metadata.version(name)
        installed = True
    except importlib.metadata.PackageNotFoundError:
        installed = False
    if canonical(name) in wheels or not installed:
        print(line)
PICK
    "$PYTHON" -m pip install --no-index --no-deps --find-links "$WHEELS" -r "$wanted"
    rm -f "$wanted"
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name())"

case "${1:-}" in
    wan-s2v|infinitetalk|omniavatar) BACKENDS="$1"; shift ;;
    all) BACKENDS="wan-s2v infinitetalk omniavatar"; shift ;;
esac
status=0
for backend in ${BACKENDS:-wan-s2v}; do
    case "$backend" in
        wan-s2v) script=benchmark_gpu.py; output=benchmark-gpu.json ;;
        infinitetalk|omniavatar) script="benchmark_$backend.py"; output="benchmark-$backend.json" ;;
        *) echo "BACKENDS names '$backend': the benchmarks are wan-s2v, infinitetalk and omniavatar" >&2; exit 1 ;;
    esac
    arguments=("$@")
    [[ ${#arguments[@]} -gt 0 ]] || arguments=(--modes full fp8 --json "$ROOT/$output")
    echo "== $backend: scripts/$script ${arguments[*]}"
    "$PYTHON" "$ROOT/scripts/$script" "${arguments[@]}" || status=$?
done
exit "$status"
