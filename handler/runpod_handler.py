"""The RunPod handler: async, so that the SDK can deliver a job's cancel to it.

The SDK stops a job (RunPod's `/cancel`, the endpoint's execution timeout) by cancelling the
task that awaits the handler, which only an async handler sees. The job itself runs in a thread,
off the event loop (the SDK's heartbeat, progress and stop channel keep running beside it); on a
cancel the handler asks the job to stop (handler/cancel.py) and waits for it to end, bounded, so
that the GPU and the job's files are free before the SDK takes the next job.
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

# The SDK's start-config key that makes a generator's items the job's final output (rp_job.handle_job).
AGGREGATE_FLAG = "return_aggregate_stream"

log = logging.getLogger(__name__)


class RunPodHandler:
    """`await handler(job)` runs one job; cancelling the awaiting task stops the job."""

    def __init__(self, worker: Worker, stop: WorkerStop | None = None) -> None:
        self._worker = worker
        self._stop = stop or WorkerStop()
        # One job at a time on the model, whatever the SDK's concurrency.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")

    async def __call__(self, job: dict[str, Any]) -> dict[str, Any]:
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

    @staticmethod
    async def _stop_job(control: JobControl, future: asyncio.Future, job: dict[str, Any]) -> None:
        """Ask the cancelled job to stop, and wait (bounded) until it has, its files removed."""
        control.stop("RunPod cancelled the job (a cancel request or the endpoint's execution timeout)")
        done, _ = await asyncio.wait({future}, timeout=STOP_WAIT_SECONDS)
        if not done:
            log.warning("job %s was cancelled but is still running after %.0f s", job.get("id"), STOP_WAIT_SECONDS)
