"""Wan2.2-S2V-14B constants that are not hyper-parameters of the transformer.

Values follow the official release (`wan/configs/wan_s2v_14B.py` and `shared_config.py`); the
transformer's own hyper-parameters live in its registered config.
"""

from __future__ import annotations

# the rate the worker hands every backend its speech at, used with the constants below
from model.base import SPEECH_SAMPLE_RATE as SPEECH_SAMPLE_RATE

# what every Wan2.1-family model shares, used with the constants below
from model.wan_common.config import NUM_TRAIN_TIMESTEPS as NUM_TRAIN_TIMESTEPS
from model.wan_common.config import T5_CHECKPOINT_FILE as T5_CHECKPOINT_FILE
from model.wan_common.config import T5_TOKENIZER_DIR as T5_TOKENIZER_DIR
from model.wan_common.config import TRANSFORMER_CONFIG_FILE as TRANSFORMER_CONFIG_FILE
from model.wan_common.config import TRANSFORMER_INDEX_FILE as TRANSFORMER_INDEX_FILE
from model.wan_common.config import VAE_CHECKPOINT_FILE as VAE_CHECKPOINT_FILE
from model.wan_common.config import VAE_STRIDE as VAE_STRIDE

# the checkpoint's and the Live Avatar LoRA's file names, declared with their weight specs, and
# each mode's frame rate (FPS the quality mode's: the official Wan2.2's `wan/configs/shared_config.py`;
# FAST_FPS Live Avatar's `liveavatar/models/wan/wan_2_2/configs/shared_config.py`), declared with the modes
from .declaration import FAST_DEFAULT_AREA, QUALITY_FPS
from .declaration import FAST_FPS as FAST_FPS
from .declaration import LORA_FILE as LORA_FILE
from .declaration import LORA_REPO_ID as LORA_REPO_ID
from .declaration import WAV2VEC_DIR as WAV2VEC_DIR

# --- video -----------------------------------------------------------------------------------
FPS = QUALITY_FPS
FRAMES_PER_CLIP = 80
MOTION_FRAMES = 73
# The first clip has no real motion history: the reference drops its motion frames.
DROP_FIRST_MOTION = True
# Output sides are padded up to multiples of this (the reference's `get_size_less_than_area`).
SIZE_DIVISOR = 64

# --- sampling --------------------------------------------------------------------------------
SAMPLE_SHIFT = 3.0
SAMPLE_STEPS = 40
SAMPLE_SOLVER = "unipc"
GUIDANCE_SCALE = 4.5
NEGATIVE_PROMPT = (
    "画面模糊，最差质量，画面模糊，细节模糊不清，情绪激动剧烈，手快速抖动，字幕，丑陋的，残缺的，"
    "多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

# --- fast mode (Live Avatar, `infinite_inference_single_gpu.sh`) ------------------------------
# 4 Euler steps without guidance on a shifted flow-matching schedule, 48-frame clips (1.92 s at
# FAST_FPS) generated 3 latent frames (12 video frames) at a time, each step against its own cache
# of one clip.
FAST_SAMPLE_STEPS = 4
FAST_SAMPLE_SHIFT = 3.0
FAST_FRAMES_PER_CLIP = 48
FAST_LATENT_FRAMES_PER_BLOCK = 3
FAST_MAX_AREA = FAST_DEFAULT_AREA
# The portrait is encoded as this many identical frames (the reference latent is the second
# latent of that), and as this many times MOTION_FRAMES identical frames for the motion history.
FAST_PORTRAIT_REPEATS = 5
# Each pass puts the reference image this many latent frames ahead of the video, drawn anew
# (the reference draws Python's random.randint(4, 30) in every pass).
FAST_REFERENCE_DISTANCE = (4, 30)
# More steps mean more caches (about 10 GB each at 704x384 in bf16); the LoRA was distilled for 4.
FAST_MAX_STEPS = 4

# --- speech encoder --------------------------------------------------------------------------
# wav2vec2 emits 50 feature frames per second; the reference first resamples them to a fixed
# 30 frames per second and only then picks one per video frame.
WAV2VEC_FRAME_RATE = 50
SPEECH_FEATURE_RATE = 30

# --- Live Avatar LoRA (fast mode) ------------------------------------------------------------
# The rank is read from the file; alpha is not in it. Live Avatar trained with lora_alpha 64.0
# at rank 128 (liveavatar/configs/s2v_causal_sft.yaml), so its updates are scaled by 64 / 128.
LORA_ALPHA = 64.0
