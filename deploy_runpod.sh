#!/usr/bin/env bash
# Build, push and deploy the talking-head worker as a RunPod serverless endpoint; run it again to
# update the same endpoint. `./deploy_runpod.sh --help` lists the options; scripts/deploy.py has them.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="$root/.venv/bin/python"
[[ -x $python ]] || python=python3
command -v "$python" >/dev/null 2>&1 \
    || { echo "error: neither $root/.venv/bin/python nor python3 was found: run 'make install'" >&2; exit 1; }
# The caller's directory stays the working directory, so that a relative --env-file means what it
# says; the root on the module path resolves `scripts.`, and safe-path mode (Python 3.11+) keeps a
# `scripts` folder in the caller's directory from shadowing it.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1 exec "$python" -m scripts.deploy "$@"
