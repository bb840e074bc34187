"""What every torch backend shares: the device it reports, the accelerator's failures in the
contract's terms, memory given back after a stopped job, and the guard that keeps a real-size
model off a machine without CUDA."""

from __future__ import annotations

import abc
import contextlib
import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from model.base import BackendOutOfMemoryError, HostUnfitError, TalkingHeadBackend

log = logging.getLogger(__name__)

# A transformer wider than this is a real model, which a CPU would take hours a job to run; the
# tests' tiny checkpoints are 24 to 32 wide.
CPU_MAX_TRANSFORMER_WIDTH = 1024


class TorchBackend(TalkingHeadBackend):
    """A backend whose model runs in torch, on a CUDA device or (tiny test models only) the CPU."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where the model computes."""

    @property
    def device_name(self) -> str:
        device = self.device
        if device.type != "cuda":
            return "cpu"
        return torch.cuda.get_device_name(device)

    def out_of_memory_message(self) -> str:
        """The sentence a job that ran out of GPU memory fails with; a backend with memory modes
        names its mode and the next smaller one."""
        return "the GPU ran out of memory; lower the resolution or deploy the endpoint on a GPU with more memory."

    def translate_error(self, error: Exception) -> Exception:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            return BackendOutOfMemoryError(self.out_of_memory_message())
        return error

    def needs_fresh_worker(self, error: Exception) -> bool:
        # what CUDA reports once a kernel has faulted: the context is unusable until the process ends
        text = str(error)
        return isinstance(error, RuntimeError) and ("CUDA error" in text or "device-side assert" in text)

    def release_memory(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            gc.collect()
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def out_of_memory_as_job_error(self) -> Iterator[None]:
        """A CUDA out-of-memory error becomes BackendOutOfMemoryError with `out_of_memory_message`."""
        try:
            yield
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise BackendOutOfMemoryError(self.out_of_memory_message()) from None


def check_cpu_can_run(model: str, transformer_width: int) -> None:
    """On a machine without CUDA: HostUnfitError for a real-size `model` (the worker leaves the
    pool), a warning for a tiny test checkpoint."""
    if transformer_width > CPU_MAX_TRANSFORMER_WIDTH:
        raise HostUnfitError(
            f"this machine has no usable CUDA GPU, and {model} needs one; deploy the endpoint on GPU "
            "workers, or set MODEL_BACKEND=lite for the CPU backend."
        )
    log.warning("no CUDA GPU: %s runs on the CPU in float32, which is only usable with tiny test checkpoints", model)


@contextlib.contextmanager
def load_failures_as_host_unfit(models: str, weights: Path, out_of_memory: str) -> Iterator[None]:
    """Failures while loading `models` from `weights` onto this machine become HostUnfitError:
    they belong to its GPU or the files on its disk, and another worker may well succeed, so the
    worker leaves the pool. `out_of_memory` is the sentence for a GPU too small."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise HostUnfitError(out_of_memory) from None
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        log.exception("loading %s from %s failed", models, weights)
        raise HostUnfitError(
            f"the {models} weights in {weights} could not be loaded ({type(error).__name__}); "
            "the files may be incomplete or corrupt: delete them so the worker downloads them again."
        ) from error
