#!/usr/bin/env bash
# How long `make test` takes while the machine is busy with something else: LOAD processes that
# each keep a core busy (default 2) run beside it, as a shared CI runner or a laptop in use would.
# Prints make's exit status, the wall-clock seconds and the CPU time make test used.
#   bash scripts/time_test_under_load.sh [LOAD]
set -euo pipefail
cd "$(dirname "$0")/.."
load=${1:-2}
busy=()
for _ in $(seq "$load"); do
    bash -c 'while :; do :; done' &
    busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null || true' EXIT
started=$(date +%s)
status=0
/usr/bin/time -f "make test: %U s user, %S s system CPU" make test || status=$?
echo "make test under a load of $load: exit $status in $(( $(date +%s) - started )) s"
exit "$status"
