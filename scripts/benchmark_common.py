"""What the backend benchmarks (benchmark_infinitetalk.py, benchmark_omniavatar.py) share beyond
benchmark_gpu.py's helpers: a split timer over any methods, the step clock, the CPU stand-ins of
the `--tiny` test path, the no-GPU refusal and the JSON output."""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from model.wan_common.memory import GIB

NO_CUDA = "no CUDA GPU: this benchmark needs one"


class StepClock:
    """Times (after a synchronisation) at which each denoising step ended, by (clip, step)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.ticks: list[tuple[float, int, int]] = []

    def start(self) -> None:
        torch.cuda.synchronize()
        self.started = time.perf_counter()

    def now(self) -> float:
        torch.cuda.synchronize()
        return time.perf_counter() - self.started

    def tick(self, clip: int, step: int) -> None:
        self.ticks.append((self.now(), clip, step))

    def later_step_seconds(self) -> float:
        """The median step, each clip's first step left out (it also carries the clip's conditioning)."""
        durations = [later - earlier for (earlier, clip, _), (later, next_clip, _) in itertools.pairwise(self.ticks)
                     if clip == next_clip]
        if not durations:
            raise ValueError("time at least 2 steps per clip: the first step of a clip is not counted")
        return statistics.median(durations)


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / GIB


def refuse_without_cuda(tiny: bool) -> bool:
    """True (and the reason printed) when there is no GPU and this is not the CPU test path."""
    if tiny or torch.cuda.is_available():
        return False
    print(NO_CUDA, file=sys.stderr)
    return True


@contextlib.contextmanager
def cpu_stand_ins(enabled: bool) -> Iterator[None]:
    """The `--tiny` path runs on the CPU: torch.cuda's clock and memory calls become no-ops there."""
    if not enabled:
        yield
        return
    saved = {name: getattr(torch.cuda, name) for name in ("synchronize", "reset_peak_memory_stats",
                                                          "max_memory_allocated", "memory_allocated", "empty_cache")}
    for name in saved:
        setattr(torch.cuda, name, (lambda *args, **kwargs: 0) if "memory_allocated" in name else
                (lambda *args, **kwargs: None))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models' work is too small to share: threads only wait on each other
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for name, function in saved.items():
            setattr(torch.cuda, name, function)


def device_name(tiny: bool) -> str:
    return "CPU (tiny models: the figures mean nothing)" if tiny else torch.cuda.get_device_name()


def write_json(path: Path | None, gpu: str, results: list[dict], notes: Sequence[str]) -> None:
    if path is not None:
        path.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "notes": list(notes),
                                    "results": results}, indent=2))
