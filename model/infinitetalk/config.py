"""InfiniteTalk's constants that are not hyper-parameters of the transformer.

Values follow MeiGen-AI/InfiniteTalk: `generate_infinitetalk.py` (its argparse defaults and their
validation), `wan/multitalk.py` (`generate_infinitetalk`'s windows and speaker layout),
`wan/configs/wan_multitalk_14B.py` and the README's step-distilled setting.
`tests/test_infinitetalk_config.py` reads each from the reference and compares.

Standard library only.
"""

from __future__ import annotations

from model.wan_common.config import NUM_TRAIN_TIMESTEPS as NUM_TRAIN_TIMESTEPS
from model.wan_common.config import TEXT_LEN as TEXT_LEN
from model.wan_common.config import VAE_STRIDE as VAE_STRIDE

# --- video -----------------------------------------------------------------------------------
# Not Wan2.1's 16: the speech features are cut at 25 frames per second (`get_embedding`) and the
# video is written at 25 (`save_video_ffmpeg`).
FPS = 25
# Video frames per clip (`--frame_num`, 4n + 1) and the frames of the previous clip that start
# the next one (`--motion_frame`); each clip after the first adds CLIP_FRAMES - MOTION_FRAMES.
CLIP_FRAMES = 81
MOTION_FRAMES = 9
# `--max_frame_num`: the longest video the reference makes in one run (40 s).
MAX_FRAMES = 1000
PATCH_SIZE = (1, 2, 2)

# --- speech ----------------------------------------------------------------------------------
# Each video frame gets the features of this many frames centred on it (2 either side, clamped at
# the ends of the speech).
AUDIO_WINDOW = 5

# --- sampling: quality ------------------------------------------------------------------------
SAMPLE_STEPS = 40
# The flow-matching shift for each of the reference's size buckets (`_validate_args`).
SAMPLE_SHIFT = {"infinitetalk-480": 7.0, "infinitetalk-720": 11.0}
DEFAULT_SIZE_BUCKET = "infinitetalk-480"
TEXT_GUIDE_SCALE = 5.0
AUDIO_GUIDE_SCALE = 4.0

# --- sampling: fast (the lightx2v step-distillation LoRA) ------------------------------------
# The README: lightx2v "requires only 4 steps"; with a LoRA it recommends text guidance 1 (so
# only the audio guidance pass runs besides the conditional one) and audio guidance 2; its
# LoRA command samples with shift 2 and LoRA scale 1.
FAST_SAMPLE_STEPS = 4
FAST_SAMPLE_SHIFT = 2.0
FAST_TEXT_GUIDE_SCALE = 1.0
FAST_AUDIO_GUIDE_SCALE = 2.0
FAST_LORA_SCALE = 1.0

# `--color_correction_strength`: each decoded clip's CIELAB colours are moved to the first
# conditioning frame's, fully (colour.py)
COLOUR_CORRECTION_STRENGTH = 1.0

# --- two speakers ------------------------------------------------------------------------------
# Without boxes, speaker 1 is looked for in the left half of the frame and speaker 2 in the
# right, each half inset by this fraction on every side (`face_scale`).
SPEAKER_INSET = 0.05

NEGATIVE_PROMPT = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
    "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, "
    "poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, "
    "messy background, three legs, many people in the background, walking backwards"
)
