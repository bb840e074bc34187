"""A result's `gpu`: the CUDA device's name for a model on a GPU, `cpu` for the CPU backend."""

from __future__ import annotations

import sys
import types

from handler.device import device_name


class _FakeCuda:
    @staticmethod
    def get_device_name(device) -> str:
        return f"NVIDIA H100 80GB HBM3 (device {device.index})"


def test_a_model_on_a_cuda_device_reports_its_name(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=_FakeCuda))
    pipeline = types.SimpleNamespace(device=types.SimpleNamespace(type="cuda", index=1))
    assert device_name(types.SimpleNamespace(pipeline=pipeline)) == "NVIDIA H100 80GB HBM3 (device 1)"
    assert device_name(types.SimpleNamespace(device=types.SimpleNamespace(type="cuda", index=0))).endswith("(device 0)")


def test_a_model_on_the_cpu_or_without_a_device_reports_cpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=_FakeCuda))
    on_cpu = types.SimpleNamespace(pipeline=types.SimpleNamespace(device=types.SimpleNamespace(type="cpu")))
    assert device_name(on_cpu) == "cpu"
    assert device_name(object()) == "cpu"
    monkeypatch.delitem(sys.modules, "torch")
    assert device_name(types.SimpleNamespace(device=types.SimpleNamespace(type="cuda", index=0))) == "cpu"
