"""The memory modes every Wan backend offers, and which one a worker runs in.

- full: every model in bf16 on the GPU.
- fp8: the transformer blocks' attention and feed-forward linears stored in float8 and expanded
  to bf16 one block at a time as it runs; the text encoder kept in host memory, visiting the GPU
  only to encode a prompt not seen before.
- offload: the transformer's blocks kept in pinned host memory and streamed to the GPU one group
  ahead of use; the text encoder runs on the CPU.

How much free GPU memory each mode needs is each model's (its `MIN_FREE_BYTES`); placement.py
puts the weights where a mode says. Standard library only, so that a declaration can name the modes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

GIB = 1024**3
MEMORY_MODE_SETTING = "WAN_MEMORY_MODE"


class MemoryMode(enum.StrEnum):
    """From the most GPU memory to the least."""

    FULL = "full"
    FP8 = "fp8"
    OFFLOAD = "offload"

    @property
    def smaller(self) -> MemoryMode | None:
        """The mode that needs the next less GPU memory, or None for the smallest."""
        order = list(MemoryMode)
        index = order.index(self)
        return order[index + 1] if index + 1 < len(order) else None


class MemoryModeError(ValueError):
    """WAN_MEMORY_MODE has a value that is not a mode."""


def choose_memory_mode(free_bytes: int, forced: str | None, min_free_bytes: Mapping[MemoryMode, int]) -> MemoryMode:
    """`forced` (the setting WAN_MEMORY_MODE) when set, else the largest mode whose
    `min_free_bytes` (the model's) fit `free_bytes` of GPU memory."""
    forced = (forced or "").strip().lower()
    if forced:
        try:
            return MemoryMode(forced)
        except ValueError:
            names = ", ".join(mode.value for mode in MemoryMode)
            raise MemoryModeError(
                f"{MEMORY_MODE_SETTING}={forced!r} is not a memory mode; use one of {names}."
            ) from None
    for mode in MemoryMode:
        if free_bytes >= min_free_bytes[mode]:
            return mode
    return MemoryMode.OFFLOAD


def out_of_memory_message(mode: MemoryMode) -> str:
    """The sentence a job that ran out of GPU memory fails with."""
    return f"the GPU ran out of memory in memory mode {mode.value!r}; {smaller_mode_advice(mode)}"


def smaller_mode_advice(mode: MemoryMode) -> str:
    """What to do when `mode` does not fit: the next smaller mode, or a larger GPU."""
    smaller = mode.smaller
    if smaller is None:
        return "it is the smallest one: lower the resolution or deploy the endpoint on a GPU with more memory."
    return (
        f"set {MEMORY_MODE_SETTING}={smaller.value} (the next smaller mode) on the endpoint, lower the resolution, "
        "or deploy on a GPU with more memory."
    )
