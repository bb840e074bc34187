"""The RunPod handler: async, so that the SDK can deliver a job's cancel to it.

The SDK stops a job (RunPod's `/cancel`, the endpoint's execution timeout) by cancelling the
task that awaits the handler, which only an async handler sees. The job itself runs in a thread,
off the event loop (the SDK's heartbeat, progress and stop channel keep running beside it); on a
cancel the handler asks the job to stop (handler/cancel.py) and waits for it to end, bounded, so
that the GPU and the job's files are free before the SDK takes the next job.

A live job (`{"live": {...}}`: a session in a LiveKit room, handler/livekit_job.py) runs on the
event loop instead, its frames rendered in the session's own thread; a cancel or SIGTERM ends its
session within a frame and leaves the room, and its result says why it ended.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from handler.cancel import STOP_WAIT_SECONDS, JobControl, WorkerStop
from handler.job import Worker
from handler.livekit_job import LiveJobLimits, WorkerSessions, is_live_job, run_live_job

# The SDK's start-config key that makes a generator's items the job's final output (rp_job.handle_job).
AGGREGATE_FLAG = "return_aggregate_stream"
# A live job ends its session this long before the endpoint's execution timeout, to leave the room and report.
LIVE_RESULT_MARGIN_SECONDS = 30.0

log = logging.getLogger(__name__)


class RunPodHandler:
    """`await handler(job)` runs one job; cancelling the awaiting task stops the job."""

    def __init__(self, worker: Worker, stop: WorkerStop | None = None) -> None:
        self._worker = worker
        self._stop = stop or WorkerStop()
        # One job at a time on the model, whatever the SDK's concurrency.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self._live_sessions: Any = None

    async def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
        if is_live_job(job.get("input")):
            return await self._live(job)
        control, future = self._start(job)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await self._stop_job(control, future, job)
            raise
        finally:
            self._stop.unwatch(control)

    async def stream(self, job: dict[str, Any], sdk_config: MutableMapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The generator handler of an endpoint with STREAM_RESULTS=1: a `stream` job's segments
        as they are made, then the job's result (or its error) as the last item.

        The SDK fails a job whose item has "error", and refreshes a worker only through its start
        config, so a result asking for a fresh worker sets that (`sdk_config`) instead of being
        sent with the flag. The job's final output (what /status and /runsync give) is `[result]`.
        """
        if is_live_job(job.get("input")):
            # a live session streams into its room, not through /stream: its result is the one item
            sdk_config[AGGREGATE_FLAG] = True
            yield await self._live(job)
            return
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def emit(item: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        control, future = self._start(job, emit)
        future.add_done_callback(lambda _: items.put_nowait(None))
        try:
            while (item := await items.get()) is not None:
                # The SDK reads this flag as each item arrives (runpod 1.12, rp_job.handle_job):
                # segments went out through /stream already, so only the result joins the job's
                # final output, which stays one small item whatever the video's length.
                sdk_config[AGGREGATE_FLAG] = False
                yield item
            result = future.result()
            if result.pop("refresh_worker", False):
                sdk_config["refresh_worker"] = True
            sdk_config[AGGREGATE_FLAG] = True
            yield result
        except (asyncio.CancelledError, GeneratorExit):  # a cancel reaches a generator as either
            await self._stop_job(control, future, job)
            raise
        finally:
            self._stop.unwatch(control)

    def _start(
        self, job: dict[str, Any], emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[JobControl, asyncio.Future[dict[str, Any]]]:
        """The job running in the job thread, and the control that stops it (watched by the worker stop)."""
        # Installed here, on the event loop's (main) thread, after the SDK has set up its own
        # signal handlers, so that a worker stop also stops the running job.
        self._stop.install()
        control = JobControl()
        self._stop.watch(control)
        run = functools.partial(self._worker.handle, job, control, emit=emit)
        return control, asyncio.get_running_loop().run_in_executor(self._executor, run)

    async def _live(self, job: dict[str, Any]) -> dict[str, Any]:
        """A live job: its session held in its LiveKit room until it ends; a cancel or a worker stop ends it."""
        worker = self._worker
        if worker.startup_error is not None:
            return {"error": str(worker.startup_error)}
        if self._live_sessions is None:
            from handler.live_session import LiveSessions

            self._live_sessions = LiveSessions(worker, worker.settings)
        settings = worker.settings
        longest = settings.live_max_session_seconds
        if settings.execution_timeout_seconds is not None:
            # RunPod cancels a job at the endpoint's execution timeout: end the session just before, with its result
            longest = min(longest, max(1.0, settings.execution_timeout_seconds - LIVE_RESULT_MARGIN_SECONDS))
        limits = LiveJobLimits(settings.allow_private_urls, longest)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        self._stop.install()
        control = JobControl()
        self._stop.watch(control)
        sessions = WorkerSessions(worker, self._live_sessions)

        def wake() -> None:
            loop.call_soon_threadsafe(stop.set)

        task = asyncio.ensure_future(run_live_job(job, sessions, limits, stop, worker.loaded_backend.name))
        try:
            # a SIGTERM's stop comes from the signal handler, on this loop's thread
            with control.interrupting(wake):
                return await asyncio.shield(task)
        except (asyncio.CancelledError, GeneratorExit):
            stop.set()
            done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_SECONDS)
            if not done:
                log.warning("live job %s was cancelled but has not left its room after %.0f s",
                            job.get("id"), STOP_WAIT_SECONDS)
            raise
        finally:
            self._stop.unwatch(control)

    @staticmethod
    async def _stop_job(control: JobControl, future: asyncio.Future, job: dict[str, Any]) -> None:
        """Ask the cancelled job to stop, and wait (bounded) until it has, its files removed."""
        control.stop("RunPod cancelled the job (a cancel request or the endpoint's execution timeout)")
        done, _ = await asyncio.wait({future}, timeout=STOP_WAIT_SECONDS)
        if not done:
            log.warning("job %s was cancelled but is still running after %.0f s", job.get("id"), STOP_WAIT_SECONDS)
