"""Pick and load the backend named by MODEL_BACKEND (or the best one this machine can run)."""

from __future__ import annotations

import logging
from pathlib import Path

from model.base import ModelUnavailableError, TalkingHeadBackend

log = logging.getLogger(__name__)

BACKENDS = ("lite", "wan-s2v")


def default_backend_name(model_dir: Path) -> str:
    """`wan-s2v` when a CUDA GPU and its weights are present, else the CPU backend."""
    try:
        import torch
    except ImportError:
        return "lite"
    if not torch.cuda.is_available():
        return "lite"
    from model.wan_s2v.weights import weights_present

    return "wan-s2v" if weights_present(model_dir) else "lite"


def load_backend(name: str | None, model_dir: Path, memory_mode: str | None = None) -> TalkingHeadBackend:
    """Load a backend once, at worker start. Raises ModelUnavailableError with where it looked.

    `memory_mode` is WAN_MEMORY_MODE for a GPU backend (None: chosen from the free memory).
    """
    name = name or default_backend_name(model_dir)
    if name not in BACKENDS:
        raise ModelUnavailableError(
            f"MODEL_BACKEND={name!r} is unknown; set it to one of {', '.join(BACKENDS)}."
        )
    log.info("loading backend %s", name)
    if name == "lite":
        from model.lite.backend import LiteBackend

        return LiteBackend()
    from model.wan_s2v.backend import WanS2VBackend

    return WanS2VBackend.load(model_dir, memory_mode)
