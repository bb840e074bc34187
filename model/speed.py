"""How long a job takes: the measured figures in data/costs.toml, or a backend's conservative default.

A figure is device-seconds per second of video (GPU-seconds on a GPU backend, CPU-seconds on a
CPU one) for a backend, mode, GPU family, memory mode and video size. A job at a size larger than
the figure's is scaled by the area ratio to the power 1.5: attention grows faster than the pixel
count, and the measured pair 832x448 -> 1280x704 (area x2.42, time x3.8) follows that power. A
smaller job keeps the figure unscaled, which can only overestimate.

Standard library only: the worker, the deploy tool and the cost calculator read it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from pathlib import Path

from model.declaration import BackendDeclaration, Speed

DATA = Path(__file__).resolve().parent.parent / "data" / "costs.toml"
# time grows as (area ratio) ** AREA_POWER for a larger video than the figure's
AREA_POWER = 1.5


@dataclasses.dataclass(frozen=True)
class Figure:
    """One figure: device-seconds per video-second at `width`x`height`, and where it comes from."""

    seconds_per_video_second: float
    width: int
    height: int
    basis: str

    def at_area(self, area: int) -> float:
        ratio = area / float(self.width * self.height)
        return self.seconds_per_video_second * (ratio**AREA_POWER if ratio > 1 else 1.0)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A job's expected device time: per video-second, fixed per job, and what it rests on."""

    seconds_per_video_second: float
    overhead_seconds: float
    basis: str

    def seconds(self, speech_seconds: float) -> float:
        return self.overhead_seconds + speech_seconds * self.seconds_per_video_second

    def longest_speech(self, budget_seconds: float) -> float:
        """The longest speech whose estimate fits `budget_seconds` (0 when not even the overhead does)."""
        return max(0.0, (budget_seconds - self.overhead_seconds) / self.seconds_per_video_second)


@functools.cache
def measured(path: Path = DATA) -> tuple[tuple[str, str, str, str, Figure], ...]:
    """(backend, mode, GPU family, memory mode, figure) of each [[measured]] row; none without the file."""
    try:
        rows = tomllib.loads(path.read_text()).get("measured", [])
    except (OSError, tomllib.TOMLDecodeError):
        return ()
    figures = []
    for row in rows:
        figure = Figure(float(row["gpu_seconds_per_video_second"]), int(row["width"]), int(row["height"]),
                        f"measured on {row.get('device') or row['gpu']} ({row.get('source', 'data/costs.toml')})")
        figures.append((str(row["backend"]), str(row["mode"]), str(row["gpu"]), str(row["memory_mode"]), figure))
    return tuple(figures)


def gpu_family(device_name: str, families: list[str] | tuple[str, ...]) -> str | None:
    """The family among `families` a device's name names ("NVIDIA H100 80GB HBM3" -> "H100"), the
    longest that matches ("L40S", not "L40"); None when none does."""
    squeezed = device_name.replace(" ", "").upper()
    named = [family for family in families if family.replace(" ", "").upper() in squeezed]
    return max(named, key=len) if named else None


def estimate(entry: BackendDeclaration, mode: str, area: int, gpu: str | None = None,
             memory_mode: str | None = None, path: Path = DATA) -> Estimate:
    """The expected device time of a job in `mode` at `area` pixels, on `gpu` (a device name or a
    family; None: any) in `memory_mode` (None: any): the slowest matching measured figure, else
    the backend's declared default for the mode."""
    rows = [(family, row_memory, figure) for backend, row_mode, family, row_memory, figure in measured(path)
            if backend == entry.name and row_mode == mode and (memory_mode is None or row_memory == memory_mode)]
    if gpu is not None:
        family = gpu_family(gpu, [family for family, _, _ in rows])
        rows = [row for row in rows if row[0] == family]
    overhead = entry.deploy.job_overhead_seconds
    if not rows:
        default: Speed = entry.deploy.speeds[mode]
        figure = Figure(default.seconds_per_video_second, default.width, default.height,
                        f"{entry.name}'s conservative default for mode {mode} (nothing measured here)")
        return Estimate(figure.at_area(area), overhead, figure.basis)
    # per GPU family and memory mode, the figure of the largest size at or below the job's, scaled
    # up to it (else the smallest size, larger than the job's); then the slowest of those
    chosen = []
    for key in {(family, row_memory) for family, row_memory, _ in rows}:
        figures = sorted((figure for family, row_memory, figure in rows if (family, row_memory) == key),
                         key=lambda figure: figure.width * figure.height)
        below = [figure for figure in figures if figure.width * figure.height <= area]
        chosen.append(below[-1] if below else figures[0])
    slowest = max(chosen, key=lambda figure: figure.at_area(area))
    return Estimate(slowest.at_area(area), overhead, slowest.basis)


def execution_timeout(entry: BackendDeclaration, mode: str, area: int, speech_seconds: float,
                      devices: tuple[str, ...], ceiling: int | None = None) -> int:
    """Whole seconds a job of `speech_seconds` needs on the slowest of `devices` (GPU families or
    device names; one nothing was measured on counts at the backend's default), at most `ceiling`."""
    seconds = math.ceil(max(estimate(entry, mode, area, device).seconds(speech_seconds) for device in devices))
    return min(seconds, ceiling) if ceiling is not None else seconds
