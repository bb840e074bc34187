#!/usr/bin/env bash
# Push a worker image from the local docker to its registry: one that scripts/build_image.sh
# built without --push (the deploy builds with --push instead, straight from the builder).
#
#   scripts/push_image.sh [--dry-run] REPOSITORY:TAG
#
# The tag must be explicit and not "latest": RunPod workers pull the exact tag the endpoint names,
# and a moving tag would leave old and new workers running different code. --dry-run prints the
# command.
set -euo pipefail

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "error: $*" >&2
    exit 1
}

dry_run=false
image=""
while (($#)); do
    case "$1" in
        --dry-run) dry_run=true ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; exit 2 ;;
        *) [[ -z $image ]] || { usage >&2; exit 2; }; image=$1 ;;
    esac
    shift
done
[[ -n $image ]] || { usage >&2; exit 2; }
tag=${image##*/}
if [[ $tag != *:* || $tag == *:latest ]]; then
    die "$image needs an explicit tag other than latest (scripts/build_image.sh prints one)"
fi

# Docker's rule: the first path component names a registry only if it looks like a host.
registry=${image%%/*}
if [[ $image != */* || ($registry != *.* && $registry != *:* && $registry != localhost) ]]; then
    registry=docker.io
fi

echo "+ docker push $image" >&2
$dry_run && exit 0
command -v docker >/dev/null 2>&1 || die "docker is not installed or not on PATH"
docker push "$image" >&2 \
    || die "pushing $image failed: log in with 'docker login $registry' (and check that the repository exists and you may push to it), then run again"
