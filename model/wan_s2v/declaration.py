"""`MODEL_BACKEND=wan-s2v`, as the worker and the tooling see it before loading it (model/declaration.py).

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

# The GPU memory (GB) a worker needs in each memory mode (model/wan_common/memory.py): `full`
# keeps the bf16 transformer (~32 GB) and text encoder (~11 GB) on the GPU with room for
# activations; `fp8` stores the transformer's weights in fp8 (computes in bf16, so Ampere works
# too); `offload` keeps only the running blocks on the GPU.
# The fast mode runs on the same GPUs; these sizes are the quality mode's. Its extra memory,
# ~42 GB of attention caches at 704x384, fits an 80 GB card in fp8 or a 141 GB card in any mode,
# not a 48 GB card: an estimate, not yet measured on a GPU.
MEMORY_MODE_GPU_GB = {MemoryMode.FULL.value: 80, MemoryMode.FP8.value: 48, MemoryMode.OFFLOAD.value: 24}
# fp8 by default: 48 GB cards cost about half as much per second as 80 GB ones (RunPod's pricing
# table) and are easier to get, and fp8 weight storage costs little quality.
DEFAULT_MEMORY_MODE = MemoryMode.FP8.value
# RunPod marks a worker unhealthy when its start takes over 7 minutes unless RUNPOD_INIT_TIMEOUT
# says otherwise. A worker on a fresh endpoint without a volume or a cached model downloads ~50 GB
# before loading: one hour covers that at 17 MB/s or more with ten minutes left for loading. A
# worker waiting for another's download gives up sooner (model/weights.py, LOCK_WAIT_SECONDS), so
# it says why before RunPod stops it.
INIT_TIMEOUT_SECONDS = 3600

# --- the weights (model/weights.py finds or fetches them; the loader reads these names) -------
CHECKPOINT_REPO_ID = "Wan-AI/Wan2.2-S2V-14B"
WAV2VEC_DIR = "wav2vec2-large-xlsr-53-english"
# The wav2vec2 folder holds the same weights up to three times (model.safetensors,
# pytorch_model.bin, flax_model.msgpack) and an n-gram language model for CTC decoding that we
# never use: gigabytes the worker would download for nothing. One weights file is taken,
# safetensors when the repository has it.
WAV2VEC_WEIGHT_FILES = (f"{WAV2VEC_DIR}/model.safetensors", f"{WAV2VEC_DIR}/pytorch_model.bin")
CHECKPOINT_WEIGHTS = WeightSpec(
    name="Wan2.2-S2V-14B weights",
    repo_id=CHECKPOINT_REPO_ID,
    folder="Wan2.2-S2V-14B",
    size_gb=49,
    allow_patterns=(
        TRANSFORMER_CONFIG_FILE,
        TRANSFORMER_INDEX_FILE,
        "diffusion_pytorch_model-*.safetensors",
        VAE_CHECKPOINT_FILE,
        f"{T5_TOKENIZER_DIR}/*",
        f"{WAV2VEC_DIR}/*.json",
    ),
    ignore_patterns=(f"{WAV2VEC_DIR}/language_model/*", "*.msgpack", "*.h5"),
    required_files=(
        TRANSFORMER_CONFIG_FILE,
        TRANSFORMER_INDEX_FILE,
        VAE_CHECKPOINT_FILE,
        f"{WAV2VEC_DIR}/config.json",
        f"{WAV2VEC_DIR}/preprocessor_config.json",
    ),
    required_folders=(T5_TOKENIZER_DIR,),
    # the transformer's shards are read from its index; the text encoder's from its own where it
    # is kept as shards (the baked image: scripts/shard_weights.py), else it is the .pth
    shard_indexes=(TRANSFORMER_INDEX_FILE, T5_SHARD_INDEX_FILE),
    any_of=(WAV2VEC_WEIGHT_FILES, (T5_CHECKPOINT_FILE, T5_SHARD_INDEX_FILE)),
)
# Quark-Vision/Live-Avatar: Wan2.2-S2V-14B distilled to 4 sampling steps, published as one LoRA.
LORA_REPO_ID = "Quark-Vision/Live-Avatar"
LORA_FILE = "liveavatar.safetensors"
LORA_WEIGHTS = WeightSpec(
    name="Live Avatar LoRA",
    repo_id=LORA_REPO_ID,
    folder="Live-Avatar",
    size_gb=1.3,
    required_files=(LORA_FILE,),
    optional=True,
    modes=("fast",),
)

# the fast mode's default video area: Live Avatar's 704x384
FAST_DEFAULT_AREA = 704 * 384
# Frames per second, which decide how much speech each frame carries: the quality mode's is the
# official Wan2.2's (`wan/configs/shared_config.py`, sample_fps), the fast mode's Live Avatar's
# (`liveavatar/models/wan/wan_2_2/configs/shared_config.py`, sample_fps). The parity suite reads
# both from the references (tests/test_fast_mode_reference.py, tests/test_wan_pipeline_reference.py).
QUALITY_FPS = 16
FAST_FPS = 25

# The attention kernel and torch.compile of the transformer's blocks (model/wan_s2v/transformer.py,
# configure_attention; the choices are _transformer_block.ATTENTION_KERNELS', which a test checks).
ATTENTION_BACKEND_SETTING = "WAN_ATTENTION_BACKEND"
ATTENTION_BACKENDS = ("auto", "math", "flash", "efficient", "cudnn")
COMPILE_SETTING = "WAN_COMPILE"

DECLARATION = BackendDeclaration(
    name="wan-s2v",
    backend_class="model.wan_s2v.backend:WanS2VBackend",
    options_class="model.wan_s2v.options:WanS2VOptions",
    modes=("quality", "fast"),
    default_areas={"fast": FAST_DEFAULT_AREA},
    # quality: a clip of 80 frames (5 s at 16 fps) at a time, the first clip less its 3 dropped
    # motion frames; fast: a block of 12 frames (3 latents, 0.48 s at 25 fps) at a time, the
    # first less the 3 the VAE adds. model/wan_s2v/pipeline.py and fast_pipeline.py derive theirs
    # from the reference's config; tests/test_registry.py checks that they agree with these.
    frame_batches={"quality": (77, 80), "fast": (9, 12)},
    fps={"quality": QUALITY_FPS, "fast": FAST_FPS},
    weights=(CHECKPOINT_WEIGHTS, LORA_WEIGHTS),
    settings=(
        Setting(
            MEMORY_MODE_SETTING, str, None,
            "GPU memory mode: full (80 GB), fp8 (48 GB) or offload (24 GB); empty: the largest that fits "
            "the GPU's free memory",
            choices=tuple(MEMORY_MODE_GPU_GB),
        ),
        Setting(
            ATTENTION_BACKEND_SETTING, str, "auto",
            "the attention kernel: auto (torch's SDPA picks per GPU), math, flash, efficient or cudnn (that "
            "kernel, the math one where it cannot run); scripts/benchmark_gpu.py measures each",
            choices=ATTENTION_BACKENDS,
        ),
        Setting(
            COMPILE_SETTING, bool, False,
            "compile the transformer's blocks with torch.compile (slower start; off until measured)",
        ),
    ),
    deploy=DeployProfile(
        compute=GpuNeed(
            memory_gb=MEMORY_MODE_GPU_GB,
            default_memory_mode=DEFAULT_MEMORY_MODE,
            memory_mode_setting=MEMORY_MODE_SETTING,
            mode_min_memory_gb={"fast": 80},
        ),
        # a 14B diffusion model takes minutes to load, so its workers idle longer before scaling
        # down, and a job runs for many minutes
        idle_timeout_seconds=60,
        # For GPUs data/costs.toml has no figure for. quality: 8x the H100's measured 50 GPU-s a
        # video-second at 832x448, which covers the 48 GB Ampere cards (about a sixth of an H100's
        # bf16 throughput) and offload mode on 24 GB cards; fast: nothing measured anywhere yet,
        # 8x the estimate of ~9.4 GPU-s a video-second at 704x384 and 25 fps on an H100 (the FLOPs
        # of the 4 steps, the VAE and the cache copies: ~6 at 16 fps, times 25 / 16).
        speeds={"quality": Speed(400.0, 832, 448), "fast": Speed(75.0, 704, 384)},
        # the portrait's encoding, the prompt's, the last clip's decode and the upload
        job_overhead_seconds=120.0,
        # without a network volume the ~49 GB of weights land on the container disk
        disk_gb_with_volume=30,
        disk_gb_without_volume=100,
        init_timeout_seconds=INIT_TIMEOUT_SECONDS,
        weights_hint=f"""\
Weights of wan-s2v: ~49 GB, plus the fast mode's 1.3 GB LoRA. Three ways to have them, by
what a worker's start costs (the endpoint allows a start RUNPOD_INIT_TIMEOUT={INIT_TIMEOUT_SECONDS} s, RunPod's
default being 7 minutes, after which a worker counts as unhealthy):
  1. RunPod's cached models: the REST API cannot set them, so after the first deploy open the
     console > Serverless > the endpoint > Manage > Edit Endpoint, set Model to
     Wan-AI/Wan2.2-S2V-14B and save (one cached model per endpoint). RunPod puts it on the
     host before the worker starts and does not bill that download; the start loads the
     weights, and each new worker fetches the 1.3 GB LoRA itself.
  2. A network volume (--network-volume): filled once, by its first worker or beforehand from a
     pod with the volume attached. A pod mounts the volume at /workspace, a serverless worker at
     /runpod-volume: on the pod run
       python scripts/download_models.py --backend wan-s2v --model-dir /workspace/models
     and the workers find the weights at /runpod-volume/models. Workers that start together
     download it once (a lock on the volume); later starts read the ~50 GB from the volume.
     One volume per data centre, each filled once.
  3. Baked into the image (--bake-weights): no download at start; the image is ~50 GB larger,
     so every host that has not run it yet pulls it first.
  With none of them, every new worker downloads ~50 GB before it can load them: about 8
  minutes of billed GPU time at 100 MB/s, 33 at 25 MB/s (the link's speed is RunPod's).""",
        cold_start_hint="""\
Weights: this endpoint has no network volume and its image is not a baked one (tag ending
-baked), so every new worker downloads ~50 GB before its first job. To skip that, open the
console link above > Manage > Edit Endpoint, set Model to Wan-AI/Wan2.2-S2V-14B (RunPod's cached
models) and save; or deploy again with --network-volume or --bake-weights.""",
        image_extras=("wan",),
        bakes_into_image=True,
    ),
)
