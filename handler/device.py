"""The name of the device a backend's model runs on, as a result's `gpu` reports it."""

from __future__ import annotations

import sys
from typing import Any

CPU = "cpu"


def device_name(backend: Any) -> str:
    """`NVIDIA H100 80GB HBM3` for a model on a CUDA device, `cpu` otherwise.

    The backend interface names no device: a diffusion backend keeps its models on its
    pipeline's device (model/wan_s2v), the lite backend has neither and runs on the CPU.
    """
    device = getattr(backend, "device", None) or getattr(getattr(backend, "pipeline", None), "device", None)
    torch = sys.modules.get("torch")
    if torch is None or getattr(device, "type", None) != "cuda":
        return CPU
    return torch.cuda.get_device_name(device)
