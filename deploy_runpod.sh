#!/usr/bin/env bash
# Build, push and deploy the talking-head worker as a RunPod serverless endpoint; run it again to
# update the same endpoint.
#
#   ./deploy_runpod.sh [options]
#
# Settings come from .env (copy .env.example) and the environment; a flag beats both.
#   --name NAME             endpoint name (ENDPOINT_NAME, default talking-head); another name makes
#                           a second endpoint beside the first, e.g. for an A/B test
#   --backend B             wan-s2v or lite (MODEL_BACKEND, default wan-s2v); lite gets a CPU endpoint
#   --default-mode M        quality or fast (DEFAULT_MODE): the `mode` of a job that names none;
#                           fast needs ~80 GB GPUs (an estimate), so pair it with --gpu-pools
#   --memory-mode M         full, fp8 or offload (WAN_MEMORY_MODE, default fp8); picks the GPUs
#   --gpu-pools P1,P2       GPU pools in priority order, instead of the ones the memory mode picks
#   --exclude-gpu T1,T2     GPU types to leave out of those pools, e.g. 'NVIDIA L40' (RUNPOD_EXCLUDE_GPUS)
#   --gpu-count N           GPUs per worker (RUNPOD_GPU_COUNT, default 1)
#   --data-centers D1,D2    data centres, e.g. EU-RO-1,US-KS-2 (RUNPOD_DATA_CENTERS, default any)
#   --network-volume V1,V2  network volumes for the weights, at most one per data centre
#                           (RUNPOD_NETWORK_VOLUME_ID)
#   --workers-min N         always-on workers (RUNPOD_WORKERS_MIN, default 0)
#   --workers-max N         most workers (RUNPOD_WORKERS_MAX, default 3)
#   --idle-timeout S        seconds an idle worker stays up (RUNPOD_IDLE_TIMEOUT)
#   --scaler S              queue-delay or request-count (RUNPOD_SCALER, default queue-delay)
#   --scaler-value V        its threshold (RUNPOD_SCALER_VALUE, default 4)
#   --flashboot F           on, off or priority (RUNPOD_FLASHBOOT, default on)
#   --execution-timeout S   seconds one job may run (RUNPOD_EXECUTION_TIMEOUT)
#   --bake-weights          bake the weights into the image (BAKE_WEIGHTS=1); HF_TOKEN as a build secret
#   --image REF             deploy this already pushed image; no build, no push
#   --env-file FILE         read FILE instead of .env
#   --dry-run               print the plan (commands and API requests); needs neither docker nor a key
#
# A redeploy replaces the endpoint's environment variables: one set only in the console is
# removed (the tool names it). Put the worker's settings in .env instead.
#
# Weights of wan-s2v: ~49 GB, plus the fast mode's 1.3 GB LoRA. Three ways to have them, by
# what a worker's start costs (the endpoint allows a start RUNPOD_INIT_TIMEOUT=3600 s, RunPod's
# default being 7 minutes, after which a worker counts as unhealthy):
#   1. RunPod's cached models: the REST API cannot set them, so after the first deploy open the
#      console > Serverless > the endpoint > Manage > Edit Endpoint, set Model to
#      Wan-AI/Wan2.2-S2V-14B and save (one cached model per endpoint). RunPod puts it on the
#      host before the worker starts and does not bill that download; the start loads the
#      weights, and each new worker fetches the 1.3 GB LoRA itself.
#   2. A network volume (--network-volume): filled once, by its first worker or beforehand from a
#      pod with the volume attached: python scripts/download_models.py --model-dir /runpod-volume/models
#      Workers that start together download it once (a lock on the volume); later starts read
#      the ~50 GB from the volume. One volume per data centre, each filled once.
#   3. Baked into the image (--bake-weights): no download at start; the image is ~50 GB larger,
#      so every host that has not run it yet pulls it first.
#   With none of them, every new worker downloads ~50 GB before it can load them: about 8
#   minutes of billed GPU time at 100 MB/s, 33 at 25 MB/s (the link's speed is RunPod's).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    # The comment block at the top of this file.
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

die() {
    echo "error: $*" >&2
    exit 1
}

# KEY=VALUE lines, read as data (never executed); variables already set in the environment win.
load_env_file() {
    local file=$1 line key value number=0
    while IFS= read -r line || [[ -n $line ]]; do
        number=$((number + 1))
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            die "$file line $number is not KEY=VALUE"
        fi
        key=${BASH_REMATCH[2]}
        value=${BASH_REMATCH[3]}
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        if [[ -z ${!key+set} ]]; then
            export "$key=$value"
        fi
    done <"$file"
}

# Docker's rule: the first path component names a registry only if it looks like a host.
registry_of() {
    local repository=$1 first=${1%%/*}
    if [[ $repository == */* && ($first == *.* || $first == *:* || $first == localhost) ]]; then
        echo "$first"
    else
        echo docker.io
    fi
}

# `docker login` records every registry under "auths" in the Docker config, also when a
# credential store keeps the secret itself.
logged_in_to() {
    local registry=$1
    "$python" - "$registry" "${DOCKER_CONFIG:-$HOME/.docker}/config.json" <<'EOF'
import json, sys
registry, path = sys.argv[1], sys.argv[2]
names = {registry, "https://" + registry}
if registry == "docker.io":
    names |= {"https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"}
try:
    config = json.load(open(path))
except (OSError, ValueError):
    sys.exit(1)
known = set(config.get("auths", {})) | set(config.get("credHelpers", {}))
sys.exit(0 if names & known else 1)
EOF
}

# The .env variable each setting flag stands for: a flag is exported before .env is read, so it
# wins over the file.
variable_for_flag() {
    case "$1" in
        --name) echo ENDPOINT_NAME ;;
        --backend) echo MODEL_BACKEND ;;
        --default-mode) echo DEFAULT_MODE ;;
        --memory-mode) echo WAN_MEMORY_MODE ;;
        --gpu-pools) echo RUNPOD_GPU_POOLS ;;
        --exclude-gpu) echo RUNPOD_EXCLUDE_GPUS ;;
        --gpu-count) echo RUNPOD_GPU_COUNT ;;
        --data-centers) echo RUNPOD_DATA_CENTERS ;;
        --network-volume) echo RUNPOD_NETWORK_VOLUME_ID ;;
        --workers-min) echo RUNPOD_WORKERS_MIN ;;
        --workers-max) echo RUNPOD_WORKERS_MAX ;;
        --idle-timeout) echo RUNPOD_IDLE_TIMEOUT ;;
        --scaler) echo RUNPOD_SCALER ;;
        --scaler-value) echo RUNPOD_SCALER_VALUE ;;
        --flashboot) echo RUNPOD_FLASHBOOT ;;
        --execution-timeout) echo RUNPOD_EXECUTION_TIMEOUT ;;
        *) return 1 ;;
    esac
}

dry_run=false
image=""
env_file="$root/.env"
while (($#)); do
    case "$1" in
        --dry-run) dry_run=true ;;
        --bake-weights) export BAKE_WEIGHTS=1 ;;
        -h | --help) usage; exit 0 ;;
        --image | --env-file)
            (($# >= 2)) || die "$1 needs a value"
            if [[ $1 == --image ]]; then image=$2; else env_file=$2; fi
            shift
            ;;
        *)
            variable=$(variable_for_flag "$1") || { usage >&2; die "unknown argument: $1"; }
            (($# >= 2)) || die "$1 needs a value"
            export "$variable=$2"
            shift
            ;;
    esac
    shift
done

if [[ -f $env_file ]]; then
    load_env_file "$env_file"
elif [[ $env_file != "$root/.env" ]]; then
    die "$env_file does not exist"
fi

python="$root/.venv/bin/python"
[[ -x $python ]] || python=python3

# Each endpoint setting that is set; the endpoint tool has the defaults.
endpoint_args=(--name "${ENDPOINT_NAME:-talking-head}")
add_setting() {
    local option=$1 variable=$2
    if [[ -n ${!variable:-} ]]; then
        endpoint_args+=("$option" "${!variable}")
    fi
}
add_setting --backend MODEL_BACKEND
if [[ ${MODEL_BACKEND:-wan-s2v} == wan-s2v ]]; then
    add_setting --memory-mode WAN_MEMORY_MODE
fi
add_setting --gpu-pools RUNPOD_GPU_POOLS
add_setting --exclude-gpu RUNPOD_EXCLUDE_GPUS
add_setting --gpu-count RUNPOD_GPU_COUNT
add_setting --data-centers RUNPOD_DATA_CENTERS
add_setting --network-volume RUNPOD_NETWORK_VOLUME_ID
add_setting --workers-min RUNPOD_WORKERS_MIN
add_setting --workers-max RUNPOD_WORKERS_MAX
add_setting --idle-timeout RUNPOD_IDLE_TIMEOUT
add_setting --scaler RUNPOD_SCALER
add_setting --scaler-value RUNPOD_SCALER_VALUE
add_setting --flashboot RUNPOD_FLASHBOOT
add_setting --execution-timeout RUNPOD_EXECUTION_TIMEOUT
add_setting --registry-auth RUNPOD_REGISTRY_AUTH_ID
add_setting --hf-token-secret RUNPOD_HF_TOKEN_SECRET

# Prerequisites, all reported at once.
problems=()
repository=${IMAGE_REPOSITORY:-}
if [[ -z $image && -z $repository ]]; then
    if $dry_run; then
        repository="registry.example.com/you/talking-head"
        echo "note: IMAGE_REPOSITORY is not set; the plan shows $repository" >&2
    else
        problems+=("IMAGE_REPOSITORY is not set: put your registry's repository in .env, e.g. IMAGE_REPOSITORY=docker.io/you/talking-head")
    fi
fi
if ! "$python" -c 'import requests' 2>/dev/null; then
    problems+=("$python cannot import requests: run 'make install' (or pip install requests)")
fi
if ! $dry_run; then
    if [[ -z ${RUNPOD_API_KEY:-} ]]; then
        problems+=("RUNPOD_API_KEY is not set: create a key in the RunPod console (Settings > API Keys) and put it in .env")
    fi
    if [[ -z $image ]]; then
        if ! command -v docker >/dev/null 2>&1; then
            problems+=("docker is not installed or not on PATH: install Docker with the buildx plugin (or see the plan with --dry-run)")
        elif ! docker info >/dev/null 2>&1; then
            problems+=("the Docker daemon is not running or not reachable: start Docker and run again")
        elif ! docker buildx version >/dev/null 2>&1; then
            problems+=("docker buildx is missing: install the Docker buildx plugin")
        elif [[ -n $repository ]] && ! logged_in_to "$(registry_of "$repository")"; then
            problems+=("docker is not logged in to $(registry_of "$repository"): run 'docker login $(registry_of "$repository")'")
        fi
    fi
fi
if ((${#problems[@]})); then
    printf 'error: %s\n' "${problems[@]}" >&2
    exit 1
fi

# Empty, or --dry-run for every step. (Not an array: macOS's bash 3.2 calls an empty one unbound.)
dry=""
if $dry_run; then
    dry=--dry-run
    echo "Plan (dry run: nothing is built, pushed or sent):" >&2
fi

if [[ -z $image ]]; then
    bake=""
    [[ ${BAKE_WEIGHTS:-0} == 1 ]] && bake=--bake-weights
    image="$("$root/scripts/build_image.sh" ${dry:+"$dry"} ${bake:+"$bake"} "$repository")"
    "$root/scripts/push_image.sh" ${dry:+"$dry"} "$image"
fi

# As a module from the repository root, so that its `scripts.` imports resolve even under a python3
# without the project installed.
endpoint_id="$(cd "$root" && "$python" -m scripts.runpod_endpoint "${endpoint_args[@]}" --image "$image" ${dry:+"$dry"})"

sample="$root/test_input.json"
cat <<EOF

Endpoint: $endpoint_id   (image $image)
Console:  https://console.runpod.io/serverless/user/endpoint/$endpoint_id
EOF
# The weights' cold start, when neither a volume nor the image holds them (see the top of this file).
if [[ ${MODEL_BACKEND:-wan-s2v} == wan-s2v && -z ${RUNPOD_NETWORK_VOLUME_ID:-} && $image != *-baked ]]; then
    cat <<EOF

Weights: this endpoint has no network volume and its image is not a baked one (tag ending
-baked), so every new worker downloads ~50 GB before its first job. To skip that, open the
console link above > Manage > Edit Endpoint, set Model to Wan-AI/Wan2.2-S2V-14B (RunPod's cached
models) and save; or deploy again with --network-volume or --bake-weights.
EOF
fi
cat <<EOF

Send the sample job and wait for the video (the first job also waits for a cold start):
  curl -sS -X POST "https://api.runpod.ai/v2/$endpoint_id/runsync" \\
    -H "Authorization: Bearer \$RUNPOD_API_KEY" -H "Content-Type: application/json" \\
    -d "@$sample"

Queue it instead, then ask for the result with the id it returns:
  curl -sS -X POST "https://api.runpod.ai/v2/$endpoint_id/run" \\
    -H "Authorization: Bearer \$RUNPOD_API_KEY" -H "Content-Type: application/json" -d "@$sample"
  curl -sS "https://api.runpod.ai/v2/$endpoint_id/status/JOB_ID" -H "Authorization: Bearer \$RUNPOD_API_KEY"

Python (pip install runpod):
  import base64, json, os, runpod
  runpod.api_key = os.environ["RUNPOD_API_KEY"]
  job = json.load(open("$sample"))
  result = runpod.Endpoint("$endpoint_id").run_sync(job, timeout=3600)
  if result and "video_base64" in result:
      open("out.mp4", "wb").write(base64.b64decode(result.pop("video_base64")))
  print(result)
EOF
