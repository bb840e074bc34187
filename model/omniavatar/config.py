"""OmniAvatar's constants: the reference's run settings and the published models' sizes.

Run settings follow Omni-Avatar/OmniAvatar's `configs/inference.yaml` (14B) and
`configs/inference_1.3B.yaml` (the same settings, other files) and `scripts/inference.py`; the
transformer sizes are Wan2.1-T2V's (`OmniAvatar/models/wan_video_dit.py`, `from_civitai`); the audio
modules' sizes are `WanModel.__init__`'s. `tests/test_omniavatar_config.py` reads each from the
reference and compares.

The LoRA's rank and alpha and the transformer's input channels live in the published model's own
`config.json` (OmniAvatar-14B / -1.3B on the Hugging Face hub, not in the repository); the values
here are the published ones (the paper: rank 128, alpha 64) and a loader must check them against
the downloaded file.

Standard library only.
"""

from __future__ import annotations

import dataclasses

from model.wan_common.config import VAE_STRIDE as VAE_STRIDE

# --- video and speech --------------------------------------------------------------------------
FPS = 25
SAMPLE_RATE = 16000
# Silence put before the speech (`silence_duration_s`): the first frames settle on the portrait.
LEADING_SILENCE_SECONDS = 0.3
# `max_tokens`: the latent tokens one chunk may have; the chunk's video frames follow from the size.
MAX_TOKENS = 30000
# Frames a chunk repeats from the previous one (`overlap_frame`, 1 + 4n).
OVERLAP_FRAMES = 13
# The reference's sizes (height, width) a portrait is fitted to (`image_sizes_720`: 480p,
# `image_sizes_1280`: 720p); `max_hw` picks the list.
SIZES_480P = ((400, 720), (720, 720), (720, 400))
SIZES_720P = ((720, 720), (528, 960), (960, 528), (720, 1280), (1280, 720))
DEFAULT_MAX_HW = 720
SIZES_BY_MAX_HW = {720: SIZES_480P, 1280: SIZES_720P}

# --- sampling ----------------------------------------------------------------------------------
SAMPLE_STEPS = 50
# The flow-matching shift: `log_video`'s default `sigma_shift` (the script never passes one).
SAMPLE_SHIFT = 5.0
GUIDANCE_SCALE = 4.5
# `audio_scale` is empty in the reference's yaml: the audio guidance then takes GUIDANCE_SCALE.
AUDIO_GUIDANCE_SCALE: float | None = None
SEED = 42
NEGATIVE_PROMPT = (
    "Vivid color tones, background/camera moving quickly, screen switching, subtitles and special effects, "
    "mutation, overexposed, static, blurred details, subtitles, style, work, painting, image, still, overall "
    "grayish, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn "
    "hands, poorly drawn face, deformed, disfigured, malformed limbs, fingers merging, motionless image, chaotic "
    "background, three legs, crowded background with many people, walking backward"
)

# --- speech features (wav2vec2-base-960h) ----------------------------------------------------
WAV2VEC_HIDDEN = 768
WAV2VEC_LAYERS = 12
# Per video frame: the encoder's output, then the input of each of its layers and its output
# again (transformers' hidden states), side by side: 768 * (1 + 12 + 1).
AUDIO_FEATURE_DIM = WAV2VEC_HIDDEN * (WAV2VEC_LAYERS + 2)

# --- the transformer's audio modules ------------------------------------------------------------
# The audio pack folds 4 video frames (the VAE's time stride) into one latent frame.
AUDIO_PACK_FRAMES = VAE_STRIDE[0]
AUDIO_HIDDEN_SIZE = 32
# The audio is added to the tokens before blocks FIRST_AUDIO_BLOCK .. num_layers // 2 (both included).
FIRST_AUDIO_BLOCK = 2

# --- the published models (config.json on the hub) -------------------------------------------
# Noisy latents (16), the portrait's latents (16) and the mask of the given frames (1).
IN_CHANNELS = 33
LORA_RANK = 128
LORA_ALPHA = 64.0
LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")


@dataclasses.dataclass(frozen=True)
class TransformerSize:
    """The Wan2.1-T2V transformer's hyper-parameters in the reference's `WanModel` names."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6


TRANSFORMER_14B = TransformerSize(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
TRANSFORMER_1_3B = TransformerSize(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
TRANSFORMERS = {"14B": TRANSFORMER_14B, "1.3B": TRANSFORMER_1_3B}


def audio_blocks(num_layers: int) -> range:
    """The blocks the audio is added before; one audio projection each."""
    return range(FIRST_AUDIO_BLOCK, num_layers // 2 + 1)
