"""The backends this worker can run, and the loading of the one MODEL_BACKEND names.

`BACKENDS` is built from the one list below: each entry is a backend's sub-package, whose
`declaration.py` says everything the worker and the tooling need before loading it
(model/declaration.py). Adding a backend is its sub-package plus one line in that list. Reading the
registry imports no backend (nor torch or numpy): the deploy tool reads it with any Python.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.declaration import BackendDeclaration, SettingValueError

if TYPE_CHECKING:
    from model.base import TalkingHeadBackend

log = logging.getLogger(__name__)

# The backend sub-packages, in the order the worker prefers them when MODEL_BACKEND is unset
# (the first GPU backend whose weights are present, else the first CPU one).
BACKEND_PACKAGES = (
    "model.wan_s2v",
    "model.infinitetalk",
    "model.omniavatar",
    "model.lite",
)


def _declarations(packages: tuple[str, ...]) -> dict[str, BackendDeclaration]:
    declarations: dict[str, BackendDeclaration] = {}
    for package in packages:
        declaration = importlib.import_module(f"{package}.declaration").DECLARATION
        if not isinstance(declaration, BackendDeclaration):
            raise TypeError(f"{package}.declaration.DECLARATION is not a BackendDeclaration")
        if declaration.name in declarations:
            raise ValueError(f"two backends are named {declaration.name!r}")
        declarations[declaration.name] = declaration
    return declarations


BACKENDS: dict[str, BackendDeclaration] = _declarations(BACKEND_PACKAGES)
# The backend of a deploy that names none: the first listed.
DEFAULT_BACKEND = next(iter(BACKENDS))
# The first backend that runs without a GPU (the embedded default of a machine without one), if any.
CPU_BACKEND: str | None = next((entry.name for entry in BACKENDS.values() if not entry.needs_gpu), None)

# Every generation mode some backend offers (the contract's `mode`, DEFAULT_MODE's choices).
ALL_MODES: tuple[str, ...] = tuple(dict.fromkeys(mode for entry in BACKENDS.values() for mode in entry.modes))


def declaration_of(name: str) -> BackendDeclaration:
    """The declaration of MODEL_BACKEND=`name`. Raises ValueError listing the known names."""
    entry = BACKENDS.get(name)
    if entry is None:
        raise ValueError(f"MODEL_BACKEND={name!r} is unknown; set it to one of {', '.join(BACKENDS)}.")
    return entry


def default_backend_name(model_dir: Path) -> str:
    """The first GPU backend whose weights are present when a CUDA GPU is, else the first CPU backend."""
    fallback = CPU_BACKEND or DEFAULT_BACKEND
    try:
        import torch
    except ImportError:
        return fallback
    if not torch.cuda.is_available():
        return fallback
    from model.weights import weights_present

    for entry in BACKENDS.values():
        try:
            # the weights its settings choose (a model size's), as the worker would load them
            chosen = entry.weights_for(entry.read_settings(os.environ))
        except SettingValueError:
            continue  # the worker's start refuses the setting, naming it
        required = [spec for spec in chosen if not spec.optional]
        if entry.needs_gpu and required and all(weights_present(spec, model_dir) for spec in required):
            return entry.name
    return fallback


def load_backend(name: str | None, model_dir: Path, settings: Mapping[str, Mapping[str, Any]]) -> TalkingHeadBackend:
    """Load a backend once, at worker start. Raises ModelUnavailableError with where it looked.

    `settings` holds each backend's declared settings, read at start (handler/settings.py).
    """
    from model.base import ModelUnavailableError

    name = name or default_backend_name(model_dir)
    try:
        entry = declaration_of(name)
    except ValueError as error:
        raise ModelUnavailableError(str(error)) from None
    log.info("loading backend %s", name)
    backend: TalkingHeadBackend = entry.load_class().load(model_dir, settings.get(name, {}))
    return backend
