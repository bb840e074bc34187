"""`python -m handler`: start the RunPod serverless worker.

RunPod's own flags work as usual: `--rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000`
serves the local test API, `--test_input '{"input": {...}}'` runs one job, and with neither a
`test_input.json` in the working directory is run.
"""

import functools
import logging
import sys
from typing import Any

from handler.settings import requested_sdk_log_level, sdk_log_level, set_sdk_log_level, takes_jobs_from_runpod

# The SDK logs every job's input and output at DEBUG, and the one local test job's whole result
# at INFO: base64 media and presigned URLs must not reach the logs. Set before the SDK is
# imported, which reads the level once.
RUNS_ONE_LOCAL_JOB = not takes_jobs_from_runpod() and "--rp_serve_api" not in sys.argv
REQUESTED_SDK_LOG_LEVEL = requested_sdk_log_level()
SDK_LOG_LEVEL = sdk_log_level(REQUESTED_SDK_LOG_LEVEL, RUNS_ONE_LOCAL_JOB)
set_sdk_log_level(SDK_LOG_LEVEL)

from handler.runpod_handler import AGGREGATE_FLAG, RunPodHandler  # noqa: E402
from handler.runpod_sdk import runpod  # noqa: E402
from handler.startup import start_worker  # noqa: E402

log = logging.getLogger("handler")


def main() -> None:
    # force: importing the RunPod SDK already configured the root logger its own way
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    _limit_sdk_log_level_flag(sys.argv)
    if REQUESTED_SDK_LOG_LEVEL and REQUESTED_SDK_LOG_LEVEL.strip().upper() != SDK_LOG_LEVEL:
        log.warning("RUNPOD_LOG_LEVEL=%s: the RunPod SDK logs at %s instead, so that no job's media or URL is logged",
                    REQUESTED_SDK_LOG_LEVEL, SDK_LOG_LEVEL)
    worker = start_worker()
    if worker.host_fault is not None:
        runpod.serverless.register_fitness_check(_fitness_check(worker.host_fault))
    handler = RunPodHandler(worker)
    if not worker.settings.stream_results:
        runpod.serverless.start({"handler": handler})
        return
    # A generator handler: `stream` jobs send segments through /stream/{id}. Every job's final
    # output is then a list, holding its result alone (docs/CONTRACT.md, "Streaming").
    config: dict[str, Any] = {AGGREGATE_FLAG: True}
    config["handler"] = functools.partial(handler.stream, sdk_config=config)
    log.info("STREAM_RESULTS=1: jobs stream through /stream/{id}; every result is a list of items")
    runpod.serverless.start(config)


def _fitness_check(problem: str):
    """RunPod's fitness check, run before the worker takes a job (on RunPod only): failing it reports
    the worker unhealthy and ends it, so that the platform starts one on another machine."""

    def model_runs_on_this_machine() -> None:
        raise RuntimeError(problem)

    return model_runs_on_this_machine


def _limit_sdk_log_level_flag(argv: list[str]) -> None:
    """`--rp_log_level DEBUG` would undo the level above: hold it to the same limit."""
    for index, arg in enumerate(argv):
        if arg == "--rp_log_level" and index + 1 < len(argv):
            argv[index + 1] = sdk_log_level(argv[index + 1], RUNS_ONE_LOCAL_JOB)
        elif arg.startswith("--rp_log_level="):
            argv[index] = "--rp_log_level=" + sdk_log_level(arg.split("=", 1)[1], RUNS_ONE_LOCAL_JOB)


if __name__ == "__main__":
    main()
