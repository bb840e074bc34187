"""`MODEL_BACKEND=infinitetalk`, as the worker and the tooling see it before loading it (model/declaration.py).

Standard library only: the deploy tool reads it without torch.
"""

from __future__ import annotations

from model.declaration import (
    BackendDeclaration,
    DeployProfile,
    GpuNeed,
    InputSupport,
    Setting,
    Speed,
    WeightSpec,
)
from model.wan_common.config import (
    T5_CHECKPOINT_FILE,
    T5_TOKENIZER_DIR,
    TRANSFORMER_CONFIG_FILE,
    TRANSFORMER_INDEX_FILE,
    VAE_CHECKPOINT_FILE,
    shard_index_name,
)
from model.wan_common.convert_t5 import T5_SHARD_INDEX_FILE
from model.wan_common.memory import MEMORY_MODE_SETTING, MemoryMode

from .config import CLIP_FRAMES, FPS, MOTION_FRAMES

# GPU memory (GB) per memory mode (model/wan_common/memory.py). Estimates from the model's size,
# not measured on a GPU yet: the 14B transformer is ~33 GB in bf16 (Wan2.1-I2V-14B plus
# InfiniteTalk's 2.4B audio parameters), umT5 ~11 GB, CLIP ViT-H ~1.3 GB, one 81-frame clip's
# activations at 640x640 some 10 GB. full: 80 GB cards; fp8 stores the blocks' attention and
# feed-forward linears in float8 (48 GB cards); offload streams the blocks (24 GB cards).
MEMORY_MODE_GPU_GB = {MemoryMode.FULL.value: 80, MemoryMode.FP8.value: 48, MemoryMode.OFFLOAD.value: 24}
DEFAULT_MEMORY_MODE = MemoryMode.FP8.value
# a fresh worker without a volume or cached model downloads ~100 GB before loading (see weights_hint)
INIT_TIMEOUT_SECONDS = 3600

# --- the weights ------------------------------------------------------------------------------
BASE_REPO_ID = "Wan-AI/Wan2.1-I2V-14B-480P"
# the vision tower of this CLIP is the image encoder (model/wan_common/clip_image.py); its text
# tower and tokenizer (xlm-roberta-large/) are never used, so they are not fetched
CLIP_CHECKPOINT_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
BASE_WEIGHTS = WeightSpec(
    name="Wan2.1-I2V-14B-480P weights",
    repo_id=BASE_REPO_ID,
    folder="Wan2.1-I2V-14B-480P",
    # an estimate: the transformer's float32 shards ~66 GB, umT5 11 GB, CLIP 4.8 GB, VAE 0.5 GB
    size_gb=82,
    allow_patterns=(
        TRANSFORMER_CONFIG_FILE,
        TRANSFORMER_INDEX_FILE,
        "diffusion_pytorch_model-*.safetensors",
        VAE_CHECKPOINT_FILE,
        CLIP_CHECKPOINT_FILE,
        f"{T5_TOKENIZER_DIR}/*",
    ),
    required_files=(TRANSFORMER_CONFIG_FILE, TRANSFORMER_INDEX_FILE, VAE_CHECKPOINT_FILE, CLIP_CHECKPOINT_FILE),
    required_folders=(T5_TOKENIZER_DIR,),
    shard_indexes=(TRANSFORMER_INDEX_FILE, T5_SHARD_INDEX_FILE),
    any_of=((T5_CHECKPOINT_FILE, T5_SHARD_INDEX_FILE),),
)

# The reference's README fetches the repository, then model.safetensors from refs/pr/1 (the main
# branch has only pytorch_model.bin); that pull request's branch holds every file of main too.
WAV2VEC_REPO_ID = "TencentGameMate/chinese-wav2vec2-base"
WAV2VEC_REVISION = "refs/pr/1"
WAV2VEC_WEIGHTS = WeightSpec(
    name="chinese-wav2vec2-base weights",
    repo_id=WAV2VEC_REPO_ID,
    folder="chinese-wav2vec2-base",
    size_gb=0.4,
    revision=WAV2VEC_REVISION,
    required_files=("config.json", "preprocessor_config.json", "model.safetensors"),
)

# InfiniteTalk's audio-condition weights: the README runs single/ for one speaker and multi/ for
# two ("Multi-Person animation"); a worker keeps both and uses the one a job's speakers need.
INFINITETALK_REPO_ID = "MeiGen-AI/InfiniteTalk"
SINGLE_SPEAKER_FILE = "single/infinitetalk.safetensors"
TWO_SPEAKER_FILE = "multi/infinitetalk.safetensors"
INFINITETALK_WEIGHTS = WeightSpec(
    name="InfiniteTalk weights",
    repo_id=INFINITETALK_REPO_ID,
    folder="InfiniteTalk",
    # an estimate: the audio modules (2.4B parameters) in float32, twice
    size_gb=20,
    # each file, or the shards the baked image holds in its place (scripts/shard_weights.py): at
    # ~10 GB a file may be over a registry's layer cap
    any_of=tuple((name, shard_index_name(name)) for name in (SINGLE_SPEAKER_FILE, TWO_SPEAKER_FILE)),
    shard_indexes=tuple(shard_index_name(name) for name in (SINGLE_SPEAKER_FILE, TWO_SPEAKER_FILE)),
)

# The README's 4-step setting: lightx2v's step-distillation LoRA, as the README links it.
LORA_REPO_ID = "Kijai/WanVideo_comfy"
LORA_FILE = "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank32.safetensors"
LORA_WEIGHTS = WeightSpec(
    name="lightx2v step-distillation LoRA",
    repo_id=LORA_REPO_ID,
    folder="lightx2v",
    size_gb=0.7,
    required_files=(LORA_FILE,),
    optional=True,
    modes=("fast",),
)

# The worker's default area: the largest of the 480 size bucket's sizes (640x640, 1280x320), so
# that a job giving no `resolution` gets the reference's own size for its portrait.
DEFAULT_AREA = 640 * 640

DECLARATION = BackendDeclaration(
    name="infinitetalk",
    backend_class="model.infinitetalk.backend:InfiniteTalkBackend",
    options_class="model.infinitetalk.options:InfiniteTalkOptions",
    modes=("quality", "fast"),
    default_areas={"quality": DEFAULT_AREA, "fast": DEFAULT_AREA},
    # a clip at a time: the first clip's frames, then each later clip's new ones
    frame_batches={mode: (CLIP_FRAMES, CLIP_FRAMES - MOTION_FRAMES) for mode in ("quality", "fast")},
    fps=FPS,
    inputs=InputSupport(video=True, speakers=2),
    weights=(BASE_WEIGHTS, WAV2VEC_WEIGHTS, INFINITETALK_WEIGHTS, LORA_WEIGHTS),
    settings=(
        # the same variable as wan-s2v's: one backend runs per worker
        Setting(
            MEMORY_MODE_SETTING, str, None,
            "GPU memory mode: full (80 GB), fp8 (48 GB) or offload (24 GB); empty: the largest that fits "
            "the GPU's free memory",
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
        # Nothing measured yet. quality: 40 steps of three transformer passes over 81-frame clips
        # (72 new frames each) at 640x640, ~60 GPU-s a video-second on an H100 from its FLOPs, 8x
        # for slower cards; fast: 4 steps of two passes, ~6, 8x as well.
        speeds={"quality": Speed(480.0, 640, 640), "fast": Speed(50.0, 640, 640)},
        job_overhead_seconds=120.0,
        disk_gb_with_volume=30,
        disk_gb_without_volume=140,
        init_timeout_seconds=INIT_TIMEOUT_SECONDS,
        weights_hint=f"""\
Weights of infinitetalk: ~100 GB (Wan2.1-I2V-14B-480P ~82 GB, InfiniteTalk's single and
multi audio weights ~20 GB, chinese-wav2vec2-base 0.4 GB), plus the fast mode's 0.7 GB LoRA
(sizes estimated). The endpoint allows a start RUNPOD_INIT_TIMEOUT={INIT_TIMEOUT_SECONDS} s. Ways to have them:
  1. A network volume (--network-volume), filled once by its first worker or from a pod:
       python scripts/download_models.py --backend infinitetalk --model-dir /workspace/models
     and the workers find them at /runpod-volume/models.
  2. RunPod's cached models: set Model to Wan-AI/Wan2.1-I2V-14B-480P in the console (Manage >
     Edit Endpoint); each new worker still fetches the InfiniteTalk, wav2vec2 and LoRA files.
  3. Baked into the image (--bake-weights): no download at start; the image is ~100 GB larger
     (one layer per file of at most ~10 GB), so every host that has not run it yet pulls it first.
  With none of them every new worker downloads ~100 GB before its first job.""",
        cold_start_hint="""\
Weights: this endpoint has no network volume and its image is not a baked one (tag ending
-baked), so every new worker downloads ~100 GB before its first job. Deploy again with
--network-volume or --bake-weights, or set Model to Wan-AI/Wan2.1-I2V-14B-480P in the
console (RunPod's cached models).""",
        image_extras=("wan",),
        bakes_into_image=True,
    ),
)
