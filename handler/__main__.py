"""`python -m handler`: start the RunPod serverless worker.

RunPod's own flags work as usual: `--rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000`
serves the local test API, `--test_input '{"input": {...}}'` runs one job, and with neither a
`test_input.json` in the working directory is run.
"""

import logging
import os

# The SDK logs every job's input and output at DEBUG, its default: base64 media and presigned URLs
# must not reach the logs. Set before the SDK is imported, which reads it once.
os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")

import runpod  # noqa: E402

from handler.startup import start_worker  # noqa: E402


def main() -> None:
    # force: importing the RunPod SDK already configured the root logger its own way
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    worker = start_worker()
    runpod.serverless.start({"handler": worker.handle})


if __name__ == "__main__":
    main()
