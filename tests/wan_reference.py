"""Load modules of the official Wan2.2 repository for parity tests.

The checkout is found through the environment variable WAN_REFERENCE_REPO; without it the tests
that need it skip. Its files are loaded as `reference_checkout.py` describes (bare packages,
stand-ins for optional imports this environment lacks), and the official flash-attention calls
are routed to PyTorch's scaled-dot-product attention, so the reference runs on CPU in float32.

    from tests.wan_reference import reference_module, requires_reference

    @requires_reference
    def test_something():
        model_s2v = reference_module("modules.s2v.model_s2v")
"""

from __future__ import annotations

import types
from pathlib import Path

import torch

from tests.reference_checkout import EasyDict, ReferenceCheckout

REFERENCE_ENV = "WAN_REFERENCE_REPO"


def _route_flash_attention(loaded: dict[str, types.ModuleType]) -> None:
    for module in loaded.values():
        if hasattr(module, "flash_attention"):
            vars(module)["flash_attention"] = sdpa_flash_attention


_CHECKOUT = ReferenceCheckout(
    pin="wan",
    env=REFERENCE_ENV,
    what="the official Wan2.2 repository",
    package="wan",
    marker="wan/modules/model.py",
    package_dirs=lambda root: [init.parent for init in sorted((root / "wan").rglob("__init__.py"))],
    stand_ins={"easydict": {"EasyDict": EasyDict}},
    after_import=_route_flash_attention,
)
requires_reference = _CHECKOUT.requires


def reference_root() -> Path:
    """The checkout's root; skips the calling test when it is not configured or not a Wan2.2 tree."""
    return _CHECKOUT.root()


def reference_module(name: str) -> types.ModuleType:
    """Import `wan.<name>` (e.g. "modules.s2v.model_s2v") from the reference checkout."""
    return _CHECKOUT.module(name)


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
