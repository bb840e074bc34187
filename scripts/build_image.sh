#!/usr/bin/env bash
# Build the worker image for linux/amd64 (RunPod's hosts), tagged with the git commit.
#
#   scripts/build_image.sh [--bake-weights [--backend NAME]] [--push] [--dry-run] REPOSITORY
#
# REPOSITORY is the image name without a tag, e.g. docker.io/you/talking-head. The tag is the
# commit (12 hex digits), with "-dirty-<UTC time>" when the work tree has uncommitted changes so
# that a new build never hides behind an old tag, and "-NAME-baked" for --bake-weights, which
# builds the Dockerfile's `baked-NAME` target (NAME: --backend, else MODEL_BACKEND, else wan-s2v)
# and hands HF_TOKEN (when set) to it as a BuildKit secret.
# --push sends the image from the builder straight to the registry (no local copy; run
# 'docker login' first); without it the image is loaded into the local docker.
# The image reference goes to stdout; everything else to stderr. --dry-run prints the command.
set -euo pipefail

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "error: $*" >&2
    exit 1
}

bake=false
backend=${MODEL_BACKEND:-wan-s2v}
push=false
dry_run=false
repository=""
while (($#)); do
    case "$1" in
        --bake-weights) bake=true ;;
        --backend)
            (($# > 1)) || { usage >&2; exit 2; }
            backend=$2
            shift
            ;;
        --push) push=true ;;
        --dry-run) dry_run=true ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) [[ -z $repository ]] || { usage >&2; exit 2; }; repository=$1 ;;
    esac
    shift
done
[[ -n $repository ]] || { usage >&2; exit 2; }
if [[ ${repository##*/} == *:* || $repository == *@* ]]; then
    die "give the repository without a tag or digest ($repository); the tag comes from the git commit"
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
commit="$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null)" \
    || die "$root is not a git checkout with a commit; the image tag comes from the commit"
tag=$commit
if [[ -n "$(git -C "$root" status --porcelain 2>/dev/null)" ]]; then
    tag="$tag-dirty-$(date -u +%Y%m%d%H%M%S)"
fi
target=runtime
if $bake; then
    target=baked-$backend
    if ! grep -qx "FROM worker AS $target" "$root/Dockerfile"; then
        baked=$(sed -n 's/^FROM worker AS baked-//p' "$root/Dockerfile" | paste -sd, - | sed 's/,/, /g')
        die "the Dockerfile has no $target target: weights can be baked for $baked; leave out --bake-weights for $backend"
    fi
    tag="$tag-$backend-baked"
fi
image="$repository:$tag"

# --push rather than --load and a later `docker push`: a baked image is 50-100 GB, which --load
# would copy into the local image store before pushing it.
output=--load
$push && output=--push
build=(docker buildx build --platform linux/amd64 --target "$target" --tag "$image" "$output")
if $bake && [[ -n ${HF_TOKEN:-} ]]; then
    # By name: the value never appears in the command line, the build log or a layer.
    build+=(--secret "id=hf_token,env=HF_TOKEN")
fi
build+=("$root")

echo "+ ${build[*]}" >&2
if ! $dry_run; then
    command -v docker >/dev/null 2>&1 || die "docker is not installed or not on PATH; install Docker (with buildx) first"
    if ! "${build[@]}" >&2; then
        hint=""
        if $push; then
            # Docker's rule: the first path component names a registry only if it looks like a host.
            registry=${repository%%/*}
            if [[ $repository != */* || ($registry != *.* && $registry != *:* && $registry != localhost) ]]; then
                registry=docker.io
            fi
            hint="; if the push was refused, log in with 'docker login $registry' and check that you may push to $repository"
        fi
        die "docker buildx build failed for $image (see the build log above)$hint"
    fi
fi
echo "$image"
