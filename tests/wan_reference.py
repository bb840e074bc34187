"""Load modules of the official Wan2.2 repository for parity tests.

The checkout is found through the environment variable WAN_REFERENCE_REPO; without it the tests
that need it skip. The official package's `__init__` files import every pipeline (and with them
decord, librosa, the TTS stack...), so the packages are registered bare and only the requested
files are executed. Optional imports this environment lacks are replaced by stand-ins, and the
official flash-attention calls are routed to PyTorch's scaled-dot-product attention, so the
reference runs on CPU in float32.

    from tests.wan_reference import reference_module, requires_reference

    @requires_reference
    def test_something():
        model_s2v = reference_module("modules.s2v.model_s2v")
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

REFERENCE_ENV = "WAN_REFERENCE_REPO"

requires_reference = pytest.mark.skipif(
    not os.environ.get(REFERENCE_ENV),
    reason=f"set {REFERENCE_ENV} to a checkout of the official Wan2.2 repository to run parity tests",
)


def reference_root() -> Path:
    """The checkout's root; skips the calling test when it is not configured or not a Wan2.2 tree."""
    root = os.environ.get(REFERENCE_ENV)
    if not root:
        pytest.skip(f"{REFERENCE_ENV} is not set")
    path = Path(root)
    if not (path / "wan" / "modules" / "model.py").is_file():
        pytest.skip(f"{REFERENCE_ENV}={root} is not a checkout of the official Wan2.2 repository")
    return path


def reference_module(name: str) -> types.ModuleType:
    """Import `wan.<name>` (e.g. "modules.s2v.model_s2v") from the reference checkout."""
    if importlib.util.find_spec("einops") is None:
        pytest.skip("the official Wan2.2 code needs einops (in the project's test dependencies)")
    return _import_reference(str(reference_root()), name)


# Every reference module loaded so far, so that later imports share them (one `WanAttentionBlock`
# class, not one per call).
_loaded: dict[str, types.ModuleType] = {}


def _import_reference(root: str, name: str) -> types.ModuleType:
    full_name = f"wan.{name}"
    if full_name in _loaded:
        return _loaded[full_name]
    added = [key for key in _loaded if key not in sys.modules]
    sys.modules.update({key: _loaded[key] for key in added})
    try:
        added += _register_bare_packages(Path(root))
        added += _register_stand_ins()
        importlib.import_module(full_name)
        for key in [key for key in sys.modules if key == "wan" or key.startswith("wan.")]:
            if key not in _loaded:
                _loaded[key] = sys.modules[key]
                added.append(key)
            if hasattr(_loaded[key], "flash_attention"):
                vars(_loaded[key])["flash_attention"] = sdpa_flash_attention
        return _loaded[full_name]
    finally:
        # The loaded modules keep working through their own globals; leaving them registered
        # would make a later `import wan` in the same process see a half-built package.
        for key in added:
            sys.modules.pop(key, None)


def _register_bare_packages(root: Path) -> list[str]:
    names = []
    for init in sorted((root / "wan").rglob("__init__.py")):
        package_dir = init.parent
        name = ".".join(package_dir.relative_to(root).parts)
        if name in sys.modules:
            continue
        package = types.ModuleType(name)
        package.__path__ = [str(package_dir)]
        package.__package__ = name
        sys.modules[name] = package
        names.append(name)
    return names


class _EasyDict(dict):
    """The part of easydict.EasyDict that the official config files use."""

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(key) from error

    def __setattr__(self, key: str, value) -> None:
        self[key] = value


def _register_stand_ins() -> list[str]:
    stand_ins = {"easydict": {"EasyDict": _EasyDict}}
    names = []
    for name, attributes in stand_ins.items():
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            continue
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module
        names.append(name)
    return names


def sdpa_flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_lens: torch.Tensor | None = None,
    k_lens: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    q_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    deterministic: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    version: int | None = None,
) -> torch.Tensor:
    """The official `flash_attention` ([B, L, heads, head_dim] in and out) in the inputs' dtype.

    Keys past `k_lens` are masked as the varlen kernel does; queries past `q_lens` keep their
    (unused) outputs instead of being left uninitialised.
    """
    if causal or tuple(window_size) != (-1, -1) or dropout_p:
        raise NotImplementedError("the parity tests only use full, non-causal attention")
    if q_scale is not None:
        q = q * q_scale
    mask = None
    if k_lens is not None:
        positions = torch.arange(k.shape[1], device=k.device)
        mask = (positions[None, :] < k_lens.to(k.device)[:, None])[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
        attn_mask=mask, scale=softmax_scale,
    )
    return out.transpose(1, 2).contiguous()
