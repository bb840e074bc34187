"""Progress of a generation loop, with the time left estimated from its pace."""

from __future__ import annotations

import time

from model.base import ProgressCallback


class ProgressClock:
    """Counts work units (denoising steps and decodes) and estimates the time left from the pace."""

    def __init__(self, total_units: int, on_progress: ProgressCallback) -> None:
        self._total = total_units
        self._done = 0
        self._started = time.monotonic()
        self._on_progress = on_progress

    def tick(self, detail: str) -> None:
        self._done += 1
        elapsed = time.monotonic() - self._started
        left = elapsed / self._done * (self._total - self._done)
        self._on_progress(self._done / self._total, f"{detail}, about {_format_seconds(left)} left")


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
