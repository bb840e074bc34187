"""The job fields Wan2.2-S2V takes besides the shared ones, checked for the job's mode.

Ranges are generous bounds against mistakes, not tuning advice; `None` is the model's default.
The fast mode (Live Avatar) has no guidance and its own schedule, so the fields that steer those
are refused there rather than ignored, and it takes at most FAST_MAX_STEPS steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

from model.options import (
    BackendOptions,
    InvalidOptionError,
    reject_unknown,
    take_choice,
    take_float,
    take_int,
    take_text,
)

from .config import FAST_MAX_STEPS, FAST_SAMPLE_STEPS
from .scheduler import SOLVERS

QUALITY, FAST = "quality", "fast"
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
MIN_SHIFT, MAX_SHIFT = 0.1, 20.0


@dataclasses.dataclass(frozen=True)
class WanS2VOptions(BackendOptions):
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    sample_solver: str | None = None
    sample_shift: float | None = None

    @classmethod
    def parse(cls, fields: Mapping[str, Any], mode: str, backend: str) -> Self:
        options = cls(
            negative_prompt=take_text(fields, "negative_prompt"),
            num_inference_steps=take_int(fields, "num_inference_steps", 1, MAX_STEPS),
            guidance_scale=take_float(fields, "guidance_scale", 0.0, MAX_GUIDANCE),
            sample_solver=take_choice(fields, "sample_solver", SOLVERS),
            sample_shift=take_float(fields, "sample_shift", MIN_SHIFT, MAX_SHIFT),
        )
        reject_unknown(fields, cls, backend)
        if mode == FAST:
            options._check_fast()
        return options

    def _check_fast(self) -> None:
        for field in ("guidance_scale", "negative_prompt", "sample_solver", "sample_shift"):
            if getattr(self, field) is not None:
                raise InvalidOptionError(
                    field,
                    f"{field} has no meaning in mode 'fast', which samples {FAST_SAMPLE_STEPS} distilled steps "
                    "without guidance; leave it out, or use mode 'quality'.",
                )
        steps = self.num_inference_steps
        if steps is not None and steps > FAST_MAX_STEPS:
            raise InvalidOptionError(
                "num_inference_steps",
                f"num_inference_steps is at most {FAST_MAX_STEPS} in mode 'fast' (it was distilled for "
                f"{FAST_SAMPLE_STEPS}, and each step keeps its own attention cache), not {steps}.",
            )
