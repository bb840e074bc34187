"""The job fields Wan2.2-S2V takes besides the shared ones, each declared once (model/options.py).

Ranges are generous bounds against mistakes, not tuning advice; `None` is the model's default.
The fast mode (Live Avatar) has no guidance and its own schedule, so the fields that steer those
are declared for mode quality only and refused in fast rather than ignored; fast also takes at
most FAST_MAX_STEPS steps, a rule of that mode (`check_mode`).
"""

from __future__ import annotations

import dataclasses

from model.options import MAX_TEXT_LENGTH, BackendOptions, InvalidOptionError, option
from model.wan_common.config import SOLVERS

from .config import FAST_MAX_STEPS, FAST_SAMPLE_STEPS

QUALITY, FAST = "quality", "fast"
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MIN_SHIFT, MAX_SHIFT = 0.1, 20.0


@dataclasses.dataclass(frozen=True)
class WanS2VOptions(BackendOptions):
    mode_notes = {FAST: f"which samples {FAST_SAMPLE_STEPS} distilled steps without guidance"}

    negative_prompt: str | None = option(
        str, "what the video should not show", max_length=MAX_TEXT_LENGTH, modes=(QUALITY,)
    )
    num_inference_steps: int | None = option(int, "the sampler's steps", low=1, high=MAX_STEPS)
    guidance_scale: float | None = option(
        float, "the classifier-free guidance scale", low=0.0, high=MAX_GUIDANCE, modes=(QUALITY,)
    )
    sample_solver: str | None = option(str, "the sampler", choices=SOLVERS, modes=(QUALITY,))
    sample_shift: float | None = option(
        float, "the noise-schedule shift", low=MIN_SHIFT, high=MAX_SHIFT, modes=(QUALITY,)
    )

    def check_mode(self, mode: str) -> None:
        steps = self.num_inference_steps
        if mode == FAST and steps is not None and steps > FAST_MAX_STEPS:
            raise InvalidOptionError(
                "num_inference_steps",
                f"num_inference_steps is at most {FAST_MAX_STEPS} in mode 'fast' (it was distilled for "
                f"{FAST_SAMPLE_STEPS}, and each step keeps its own attention cache), not {steps}.",
            )
