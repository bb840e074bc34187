"""Stopping a job that is running: RunPod's cancel, and the worker's own stop (SIGTERM, SIGINT).

A job runs in a thread of its own (handler/runpod_handler.py). The backends call the job's progress
callback once per diffusion step (Wan2.2-S2V, both modes) or frame batch (lite); the worker's
callback asks the job's JobControl first, which raises JobCancelled once a stop was asked for. So
generation ends at the next step without model code knowing about cancellation: the exception
closes the frame generator, the MP4 writer kills ffmpeg, and the job's temporary folder goes with
its context manager.

A job that waits on something outside (a URL download) cannot check between steps while it waits:
it hands its control a way to interrupt the wait (`JobControl.interrupting`), which a stop calls at
once. `check()` also makes the control its thread's current one (`current_control`), so a wait deep
in the job's stages finds the job's control without being handed it.

Nothing here takes a lock: a stop is asked for by the event loop's thread or a signal handler,
which both run on the main thread, and read by the job's thread as one attribute.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A job stops at its next diffusion step or frame batch: a lite batch takes a fraction of a second
# on CPU, a Wan step seconds on a GPU (scripts/benchmark_gpu.py prints s/step; no step was timed
# here). The bound only keeps a stuck step from holding a front door forever: past it the door
# moves on, and the job still stops, and cleans up, when that step ends.
STOP_WAIT_SECONDS = 120.0
# The control each job thread checked last (JobControl.check): a thread runs one job at a time and
# every job checks its control before its first stage, so it is the running job's.
_current = threading.local()


class JobCancelled(BaseException):
    """The job was asked to stop; `reason` says by whom.

    A BaseException, like asyncio.CancelledError and for the same reason: no `except Exception`
    on the way out (in the model or the worker) may swallow a stop.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobControl:
    """One job's stop switch: `stop(reason)` from anywhere, `check()` from the job's own thread."""

    def __init__(self) -> None:
        self.reason: str | None = None
        #: time.monotonic() of the first stop request
        self.requested_at: float | None = None
        self._interrupts: list[Callable[[], None]] = []

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.requested_at = time.monotonic()
            self.reason = reason
            for interrupt in tuple(self._interrupts):
                try:
                    interrupt()
                except Exception:  # noqa: BLE001 - a stop must reach every wait, and the signal handler must return
                    log.exception("interrupting a job's wait failed")

    def check(self) -> None:
        """Raise JobCancelled if a stop was asked for; else make this the calling thread's control."""
        reason = self.reason
        if reason is not None:
            raise JobCancelled(reason)
        _current.control = self

    @contextlib.contextmanager
    def interrupting(self, interrupt: Callable[[], None]) -> Iterator[None]:
        """While inside, a stop also calls `interrupt` (from the stopping thread, or a signal handler:
        it must only wake the wait, e.g. shut a socket down); called at once if the job is stopped."""
        self._interrupts.append(interrupt)
        try:
            if self.stopped:
                interrupt()
            yield
        finally:
            self._interrupts.remove(interrupt)


def current_control() -> JobControl | None:
    """The control the calling thread checked last: the running job's, on a job thread."""
    return getattr(_current, "control", None)


class WorkerStop:
    """On SIGTERM or SIGINT, stop every running job, then do what the signal did before.

    Installed over whatever handler is in place when a job starts: the SDK's own (which, on
    RunPod, only stops taking jobs and waits for the running one), uvicorn's for the local API,
    or none at all for the SDK's one local test job, where the process would otherwise die with
    the job's temporary files still on disk.
    """

    def __init__(self) -> None:
        self._jobs: set[JobControl] = set()
        self._previous: dict[int, Any] = {}
        #: why the worker is stopping, once a signal came
        self.reason: str | None = None

    def install(self) -> None:
        for signum in STOP_SIGNALS:
            current = signal.getsignal(signum)
            if current == self._on_signal:
                continue
            try:
                signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: the caller's signals stay as they are
                log.debug("stop signals are handled on the main thread only")
                return
            self._previous[signum] = current

    def watch(self, control: JobControl) -> None:
        if self.reason is not None:
            control.stop(self.reason)
        self._jobs.add(control)

    def unwatch(self, control: JobControl) -> None:
        self._jobs.discard(control)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.reason = f"the worker received {signal.Signals(signum).name} and is shutting down"
        running = tuple(self._jobs)
        for control in running:
            control.stop(self.reason)
        previous = self._previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL and not running:
            raise SystemExit(128 + signum)
        # SIG_DFL with a job running: the job stops at its next step and cleans up; whoever
        # waits for it (the SDK's local test run) then ends the process.
