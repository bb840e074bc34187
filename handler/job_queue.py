"""The always-on server's jobs: one at a time on the model, a bounded number waiting behind it.

Jobs run in one thread of their own (the model is not shared between jobs), in the order they
were admitted; the event loop only admits, watches and answers. A job is admitted only while
fewer than `max_waiting` jobs wait, so a burst gets a quick refusal (HTTP 429) instead of an
answer hours later. A stop (the client left, the job's deadline passed, the server stops) reaches
the job through its JobControl, as RunPod's cancel does (handler/cancel.py); a job stopped before
it started never runs.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import math
import statistics
import threading
import time
from typing import Any

from handler.cancel import JobControl
from handler.downloads import DownloadSlot
from handler.errors import ErrorCode, JobError
from handler.job import Worker

log = logging.getLogger(__name__)

# How many finished jobs the Retry-After estimate looks back on.
RECENT_JOBS = 10


class QueueFull(Exception):
    """No room: `retry_after` is how many seconds from now a place is likely to be free."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclasses.dataclass
class Ticket:
    """One admitted job: its stop switch, its result to come, when it started and ended running."""

    job_id: str
    control: JobControl
    future: asyncio.Future = dataclasses.field(init=False)
    started_at: float | None = None


class JobQueue:
    def __init__(self, worker: Worker, max_waiting: int) -> None:
        self._worker = worker
        self._max_waiting = max_waiting
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self._lock = threading.Lock()
        self._admitted: list[Ticket] = []
        self._recent_seconds: collections.deque[float] = collections.deque(maxlen=RECENT_JOBS)

    @property
    def max_waiting(self) -> int:
        return self._max_waiting

    def state(self) -> tuple[bool, int]:
        """(whether a job is running, how many wait behind it)."""
        with self._lock:
            running = sum(1 for ticket in self._admitted if ticket.started_at is not None)
            return running > 0, len(self._admitted) - running

    def submit(self, job: dict[str, Any], download_slot: DownloadSlot) -> Ticket:
        """Admit a job (from the event loop's thread) or raise QueueFull."""
        with self._lock:
            waiting = sum(1 for ticket in self._admitted if ticket.started_at is None)
            if self._admitted and waiting >= self._max_waiting:
                raise QueueFull(self._full_message(waiting), self._retry_after())
            ticket = Ticket(job_id=str(job["id"]), control=JobControl())
            self._admitted.append(ticket)
        loop = asyncio.get_running_loop()
        ticket.future = loop.run_in_executor(self._executor, self._run, ticket, job, download_slot)
        return ticket

    def stop_all(self, reason: str) -> None:
        """Ask every admitted job to stop: the running one at its next step, the waiting ones before they start."""
        with self._lock:
            tickets = tuple(self._admitted)
        for ticket in tickets:
            ticket.control.stop(reason)

    def close(self, wait_seconds: float) -> None:
        """Stop taking jobs; wait up to `wait_seconds` for the running one to end."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + wait_seconds
        while self.state()[0] and time.monotonic() < deadline:
            time.sleep(0.05)

    def _run(self, ticket: Ticket, job: dict[str, Any], download_slot: DownloadSlot) -> dict[str, Any]:
        started_at = time.monotonic()
        with self._lock:
            ticket.started_at = started_at
        try:
            if ticket.control.stopped:
                message = f"the job was stopped before it started: {ticket.control.reason}. Submit it again."
                return {"error": str(JobError(ErrorCode.INTERNAL, message))}
            return self._worker.handle(job, ticket.control, download_slot)
        finally:
            with self._lock:
                self._recent_seconds.append(time.monotonic() - started_at)
                self._admitted.remove(ticket)

    def _full_message(self, waiting: int) -> str:
        return (f"the server is busy: one job is running and {waiting} wait behind it, as many as SERVER_QUEUE_SIZE="
                f"{self._max_waiting} allows; send the request again after the Retry-After seconds, or raise "
                "SERVER_QUEUE_SIZE on the server.")

    def _retry_after(self) -> int:
        """Seconds until the running job is likely done: a typical job's time less what it has run."""
        started = [ticket.started_at for ticket in self._admitted if ticket.started_at is not None]
        elapsed = time.monotonic() - started[0] if started else 0.0
        typical = statistics.median(self._recent_seconds) if self._recent_seconds else 0.0
        # Running longer than usual, or nothing to compare with: guess as long again.
        remaining = typical - elapsed if typical > elapsed else elapsed
        return max(1, math.ceil(remaining))
