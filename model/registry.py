"""The backends this worker can run, and the loading of the one MODEL_BACKEND names.

`BACKENDS` is the one table of them: the worker, the deploy tooling (scripts/) and the tests of
the Hub files read it, so adding a backend is its sub-package plus one line here. It imports no
backend (nor torch or numpy): the deploy tool reads it with any Python.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.base import TalkingHeadBackend

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    """One backend: its MODEL_BACKEND name, where its TalkingHeadBackend class lives (imported
    only when chosen), the generation modes it offers (the first is its default), and whether it
    needs a CUDA GPU."""

    name: str
    module: str
    class_name: str
    modes: tuple[str, ...]
    needs_gpu: bool


BACKENDS: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry("lite", "model.lite.backend", "LiteBackend", modes=("quality",), needs_gpu=False),
        BackendEntry("wan-s2v", "model.wan_s2v.backend", "WanS2VBackend", modes=("quality", "fast"), needs_gpu=True),
    )
}


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
    from model.base import ModelUnavailableError

    name = name or default_backend_name(model_dir)
    entry = BACKENDS.get(name)
    if entry is None:
        raise ModelUnavailableError(f"MODEL_BACKEND={name!r} is unknown; set it to one of {', '.join(BACKENDS)}.")
    log.info("loading backend %s", name)
    backend_class = getattr(importlib.import_module(entry.module), entry.class_name)
    backend: TalkingHeadBackend = backend_class.load(model_dir, memory_mode)
    return backend
