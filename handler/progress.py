"""Report a job's stage and percent to RunPod, throttled so the hot loop never waits on HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from handler.runpod_sdk import runpod
from handler.settings import runs_on_runpod

log = logging.getLogger(__name__)

MIN_INTERVAL_SECONDS = 2.0
# Share of the progress bar each stage takes.
PERCENT_AFTER_INPUTS = 5.0
PERCENT_AFTER_PREPARE = 10.0
PERCENT_AFTER_GENERATE = 95.0
# The playlist is ready as generation starts.
PLAYLIST_PERCENT = PERCENT_AFTER_PREPARE
# Only a real RunPod worker has somewhere to send progress; the local test server does not.
ON_RUNPOD = runs_on_runpod()


class ProgressReporter:
    """`report(stage, percent)`; sends at most one update per interval, plus every stage change."""

    def __init__(self, job: dict[str, Any], send: Callable[[dict[str, Any], Any], None] | None = None) -> None:
        self._job = job
        self._send = send or (runpod.serverless.progress_update if ON_RUNPOD else None)
        self._last_stage = ""
        self._last_time = 0.0

    def report(self, stage: str, percent: float, detail: str = "") -> None:
        now = time.monotonic()
        if stage == self._last_stage and now - self._last_time < MIN_INTERVAL_SECONDS:
            return
        self._last_stage, self._last_time = stage, now
        update = {"stage": stage, "percent": round(max(0.0, min(100.0, percent)), 1)}
        if detail:
            update["detail"] = detail
        log.info("job %s progress %s", self._job.get("id"), update)
        if self._send is not None:
            self._send(self._job, update)

    def report_playlist(self, url: str) -> None:
        """Tell the client where the stream's playlist is, at once; the presigned URL is not logged."""
        log.info("job %s: its stream's playlist is in the bucket", self._job.get("id"))
        if self._send is not None:
            self._send(self._job, {"stage": "stream", "percent": PLAYLIST_PERCENT, "playlist_url": url})
