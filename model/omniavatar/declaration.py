"""`MODEL_BACKEND=omniavatar`, as the worker and the tooling see it before loading it (model/declaration.py).

OmniAvatar is Wan2.1-T2V (14B, or the 1.3B for small GPUs: OMNIAVATAR_SIZE) with OmniAvatar's
LoRA, widened patch embedding and audio modules (one `pytorch_model.pt`), and wav2vec2-base-960h.
Which weights a worker needs follows the size: each spec says the size it serves (`when`).

Standard library only: the deploy tool reads it without torch.
"""

from __future__ import annotations

from model.declaration import BackendDeclaration, DeployProfile, GpuNeed, Setting, Speed, WeightSpec
from model.wan_common.config import (
    T5_CHECKPOINT_FILE,
    T5_TOKENIZER_DIR,
    TRANSFORMER_CONFIG_FILE,
    TRANSFORMER_INDEX_FILE,
    VAE_CHECKPOINT_FILE,
)
from model.wan_common.convert_t5 import T5_SHARD_INDEX_FILE
from model.wan_common.memory import MEMORY_MODE_SETTING, MemoryMode

from .config import FPS, OVERLAP_FRAMES, SIZES_480P

NAME = "omniavatar"
QUALITY = "quality"

# --- the size ------------------------------------------------------------------------------------
SIZE_SETTING = "OMNIAVATAR_SIZE"
SIZE_14B, SIZE_1_3B = "14B", "1.3B"
SIZES = (SIZE_14B, SIZE_1_3B)

# --- the weights (model/weights.py finds or fetches them; loader.py reads these names) ----------
# The 14B transformer is published in six safetensors shards with an index, the 1.3B in one file.
TRANSFORMER_SINGLE_FILE = "diffusion_pytorch_model.safetensors"
OMNIAVATAR_CONFIG_FILE = "config.json"
OMNIAVATAR_WEIGHTS_FILE = "pytorch_model.pt"
WAV2VEC_REPO_ID = "facebook/wav2vec2-base-960h"
WAV2VEC_FOLDER = "wav2vec2-base-960h"
# the repository also holds TensorFlow and Flax copies; one set of torch weights is taken
WAV2VEC_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# what both Wan2.1-T2V folders share besides the transformer: the VAE, umT5 and its tokenizer
_WAN_SHARED_FILES = (VAE_CHECKPOINT_FILE, f"{T5_TOKENIZER_DIR}/*")


def _wan_t2v(size: str, size_gb: float, sharded: bool) -> WeightSpec:
    transformer = (TRANSFORMER_INDEX_FILE, "diffusion_pytorch_model-*.safetensors") if sharded else (
        TRANSFORMER_SINGLE_FILE,
    )
    return WeightSpec(
        name=f"Wan2.1-T2V-{size} weights",
        repo_id=f"Wan-AI/Wan2.1-T2V-{size}",
        folder=f"Wan2.1-T2V-{size}",
        size_gb=size_gb,
        allow_patterns=(TRANSFORMER_CONFIG_FILE, *transformer, *_WAN_SHARED_FILES),
        required_files=(TRANSFORMER_CONFIG_FILE, VAE_CHECKPOINT_FILE, *((TRANSFORMER_INDEX_FILE,) if sharded else (
            TRANSFORMER_SINGLE_FILE,))),
        required_folders=(T5_TOKENIZER_DIR,),
        # the text encoder is the .pth, or its shards where the image keeps it so (scripts/shard_weights.py)
        shard_indexes=(*((TRANSFORMER_INDEX_FILE,) if sharded else ()), T5_SHARD_INDEX_FILE),
        any_of=((T5_CHECKPOINT_FILE, T5_SHARD_INDEX_FILE),),
        when=(SIZE_SETTING, size),
    )


def _omniavatar(size: str, size_gb: float) -> WeightSpec:
    return WeightSpec(
        name=f"OmniAvatar-{size} weights",
        repo_id=f"OmniAvatar/OmniAvatar-{size}",
        folder=f"OmniAvatar-{size}",
        size_gb=size_gb,
        required_files=(OMNIAVATAR_CONFIG_FILE, OMNIAVATAR_WEIGHTS_FILE),
        when=(SIZE_SETTING, size),
    )


# Sizes in GB as published (the transformers are stored in float32): 14B 57 + umT5 11.4 + VAE
# 0.5; 1.3B 5.7 + 11.4 + 0.5. The OmniAvatar files are estimates from their tensors (LoRA rank
# 128 on every block's attention and feed-forward linears, the patch embedding, the audio modules).
WAN_T2V_14B = _wan_t2v(SIZE_14B, 69, sharded=True)
WAN_T2V_1_3B = _wan_t2v(SIZE_1_3B, 17.6, sharded=False)
OMNIAVATAR_14B = _omniavatar(SIZE_14B, 2.5)
OMNIAVATAR_1_3B = _omniavatar(SIZE_1_3B, 0.4)
WAV2VEC_WEIGHTS = WeightSpec(
    name="wav2vec2-base-960h weights",
    repo_id=WAV2VEC_REPO_ID,
    folder=WAV2VEC_FOLDER,
    size_gb=0.4,
    required_files=("config.json", "preprocessor_config.json"),
    any_of=(WAV2VEC_WEIGHT_FILES,),
)
WEIGHTS_BY_SIZE = {SIZE_14B: (WAN_T2V_14B, OMNIAVATAR_14B), SIZE_1_3B: (WAN_T2V_1_3B, OMNIAVATAR_1_3B)}

# --- memory and deployment --------------------------------------------------------------------
# GPU memory (GB) per memory mode for the 14B (model/omniavatar/memory.py has the free memory each
# needs): full keeps the bf16 transformer (~28 GB) and umT5 (~11 GB) on the GPU; fp8 stores the
# blocks' linears in float8 and keeps umT5 in host memory; offload streams the blocks. The 1.3B
# (~2.6 GB in bf16) runs in full on 24 GB cards and in offload on 8 GB ones. Estimates from the
# weights' sizes and a chunk's activations at the default 30000 tokens, not yet measured on a GPU.
MEMORY_MODE_GPU_GB = {MemoryMode.FULL.value: 80, MemoryMode.FP8.value: 48, MemoryMode.OFFLOAD.value: 24}
DEFAULT_MEMORY_MODE = MemoryMode.FP8.value
# A fresh worker without a volume or cached model downloads ~72 GB (14B) before loading.
INIT_TIMEOUT_SECONDS = 3600

# The video frames of the first chunk and of each later one at the default size (720x720, the
# reference's for a square portrait) and token budget: 57-frame chunks (30000 tokens), the first
# less its portrait frame and the 7 frames of the leading silence (pipeline.LEADING_FRAMES), each
# later one less the 13 it repeats. Other sizes and budgets make other chunks; these only steer
# where a stream cuts its segments. tests/test_omniavatar_backend_job.py checks them.
DEFAULT_SIZE = SIZES_480P[1]
FRAME_BATCHES = (49, 57 - OVERLAP_FRAMES)
DEFAULT_AREA = DEFAULT_SIZE[0] * DEFAULT_SIZE[1]

DECLARATION = BackendDeclaration(
    name=NAME,
    backend_class="model.omniavatar.backend:OmniAvatarBackend",
    options_class="model.omniavatar.options:OmniAvatarOptions",
    modes=(QUALITY,),
    default_areas={QUALITY: DEFAULT_AREA},
    frame_batches={QUALITY: FRAME_BATCHES},
    fps=FPS,
    weights=(WAN_T2V_14B, OMNIAVATAR_14B, WAN_T2V_1_3B, OMNIAVATAR_1_3B, WAV2VEC_WEIGHTS),
    settings=(
        Setting(
            SIZE_SETTING, str, SIZE_14B,
            "OmniAvatar's size: 14B (the default) or 1.3B (smaller GPUs, faster, less faithful); it "
            "chooses which weights are fetched",
            choices=SIZES,
        ),
        Setting(
            MEMORY_MODE_SETTING, str, None,
            "GPU memory mode: full (80 GB), fp8 (48 GB) or offload (24 GB) for the 14B; empty: the largest "
            "that fits the GPU's free memory",
            choices=tuple(MEMORY_MODE_GPU_GB),
        ),
    ),
    deploy=DeployProfile(
        compute=GpuNeed(
            memory_gb=MEMORY_MODE_GPU_GB,
            default_memory_mode=DEFAULT_MEMORY_MODE,
            memory_mode_setting=MEMORY_MODE_SETTING,
        ),
        idle_timeout_seconds=60,
        # Nothing measured yet. The reference's README: 16 s a step (both guidance passes) for the
        # 14B on an A800 at 30000 tokens; 50 steps make a chunk of 44 new frames at 720x720 (1.76 s):
        # ~450 A800-seconds a video-second. 2x that covers slower cards and the offload mode.
        speeds={QUALITY: Speed(900.0, DEFAULT_SIZE[1], DEFAULT_SIZE[0])},
        # the portrait's encoding, the prompt's, the speech features, the last chunk's decode, the upload
        job_overhead_seconds=120.0,
        disk_gb_with_volume=30,
        disk_gb_without_volume=110,
        init_timeout_seconds=INIT_TIMEOUT_SECONDS,
        weights_hint=f"""\
Weights of omniavatar: {SIZE_SETTING}=14B (default) needs Wan-AI/Wan2.1-T2V-14B (~69 GB),
OmniAvatar/OmniAvatar-14B (~2.5 GB) and facebook/wav2vec2-base-960h (~0.4 GB); {SIZE_SETTING}=1.3B
needs Wan-AI/Wan2.1-T2V-1.3B (~18 GB), OmniAvatar/OmniAvatar-1.3B and the same wav2vec2. Only the
chosen size's weights are fetched. Ways to have them, by what a worker's start costs (the endpoint
allows a start RUNPOD_INIT_TIMEOUT={INIT_TIMEOUT_SECONDS} s):
  1. RunPod's cached models: one per endpoint; set Model to Wan-AI/Wan2.1-T2V-14B (or -1.3B) in
     the console > Serverless > the endpoint > Manage > Edit Endpoint; each new worker then
     fetches only the OmniAvatar file and wav2vec2 (~3 GB).
  2. A network volume (--network-volume), filled once: from a pod with the volume attached run
       {SIZE_SETTING}=14B python scripts/download_models.py --backend omniavatar --model-dir /workspace/models
     (a pod mounts the volume at /workspace, a worker at /runpod-volume: the workers find the
     weights at /runpod-volume/models). Workers that start together download it once (a lock).
  The Dockerfile has no baked target for omniavatar: --bake-weights is refused here.
  With none of them, every new worker downloads the weights before it can load them.""",
        cold_start_hint=f"""\
Weights: this endpoint has no network volume and no cached model, so every new
worker downloads OmniAvatar's weights (~72 GB for the 14B) before its first job. To skip most of
that, set Model to Wan-AI/Wan2.1-T2V-14B (or -1.3B with {SIZE_SETTING}=1.3B) in the console >
Manage > Edit Endpoint; or deploy again with --network-volume.""",
        image_extras=("wan",),
    ),
)
