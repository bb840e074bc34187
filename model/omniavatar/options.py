"""The job fields OmniAvatar takes besides the shared ones, each declared once (model/options.py).

Defaults (None) are the reference's config (model/omniavatar/config.py); the bounds are generous
guards against mistakes, not tuning advice. `prompt` (shared) steers expression and scene.
"""

from __future__ import annotations

import dataclasses

from model.options import MAX_TEXT_LENGTH, BackendOptions, InvalidOptionError, option

from .config import VAE_STRIDE
from .declaration import QUALITY

MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MIN_OVERLAP, MAX_OVERLAP = 1, 45
# a chunk's latent tokens: the reference's 30000 uses ~40 GB of a 14B's activations at most
MIN_TOKENS, MAX_TOKENS_BOUND = 64, 60000


@dataclasses.dataclass(frozen=True)
class OmniAvatarOptions(BackendOptions):
    negative_prompt: str | None = option(
        str, "what the video should not show", max_length=MAX_TEXT_LENGTH, modes=(QUALITY,)
    )
    num_inference_steps: int | None = option(int, "the sampler's steps", low=1, high=MAX_STEPS)
    # declared as wan-s2v declares it (a field two backends take is declared alike); here it
    # guides the text, and 1 turns every guidance off (one pass a step)
    guidance_scale: float | None = option(
        float, "the classifier-free guidance scale", low=0.0, high=MAX_GUIDANCE, modes=(QUALITY,)
    )
    audio_scale: float | None = option(
        float, "the audio guidance scale (default: guidance_scale)", low=0.0, high=MAX_GUIDANCE
    )
    overlap_frames: int | None = option(
        int, "video frames each chunk repeats from the one before (1 + 4n)", low=MIN_OVERLAP, high=MAX_OVERLAP
    )
    max_tokens: int | None = option(
        int, "latent tokens per chunk: longer chunks, more memory", low=MIN_TOKENS, high=MAX_TOKENS_BOUND
    )

    def check_mode(self, mode: str) -> None:
        if self.guidance_scale == 1.0 and self.audio_scale is not None:
            raise InvalidOptionError(
                "audio_scale",
                "audio_scale has no effect with guidance_scale 1 (no guidance at all, as the reference "
                "samples then); leave it out, or raise guidance_scale.",
            )
        overlap = self.overlap_frames
        if overlap is not None and overlap % VAE_STRIDE[0] != 1:
            raise InvalidOptionError(
                "overlap_frames",
                f"overlap_frames must be 1 + 4n (1, 5, 9, 13, ...): chunks overlap by whole latent frames, "
                f"not {overlap}.",
            )
