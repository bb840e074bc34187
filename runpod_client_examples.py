"""How clients call the talking-head endpoint on RunPod: /runsync, /run + /status, and batches.

    export RUNPOD_API_KEY=...            # RunPod console → Settings → API Keys
    python runpod_client_examples.py --endpoint-id abc123 --image me.jpg --audio hello.mp3
    python runpod_client_examples.py --endpoint-id abc123 --image me.jpg --audio a.wav --audio b.wav --mode batch

Inputs may also be URLs (`--image https://...`) or a preset (`--avatar-id anna`). Results are
written next to the current directory as `<job id>.mp4`. A job still running when the client
gives up waiting (`--timeout`, or Ctrl-C) is cancelled, so that it stops costing GPU time.
`--base-url` points the same calls at any compatible server, e.g. the worker's local test API
(`python -m handler --rp_serve_api`).
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

RUNPOD_API = "https://api.runpod.ai/v2"
# /runsync holds the request open for a while and then answers IN_PROGRESS; poll after that.
RUNSYNC_TIMEOUT_SECONDS = 120
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


class TalkingHeadClient:
    """A thin client: build the job input, submit it, wait, save the MP4."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    @staticmethod
    def job_input(
        image: str | None = None, audio: str = "", avatar_id: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """`image`/`audio` are local paths or http(s) URLs; options are any other contract field."""
        job: dict[str, Any] = dict(options)
        job.update(_media_field("audio", audio))
        if avatar_id:
            job["avatar_id"] = avatar_id
        elif image:
            job.update(_media_field("image", image))
        return job

    def runsync(self, job_input: dict[str, Any], timeout_seconds: float = 3600) -> dict[str, Any]:
        """Submit and wait in one request; falls back to polling if the job outlives the request."""
        reply = self._post("runsync", job_input, timeout=RUNSYNC_TIMEOUT_SECONDS + 30)
        if reply.get("status") in FINAL_STATES:
            return reply
        return self.wait(reply["id"], timeout_seconds)

    def submit(self, job_input: dict[str, Any], webhook: str | None = None) -> str:
        """Queue a job with /run; returns its id at once."""
        return self._post("run", job_input, timeout=30, webhook=webhook)["id"]

    def wait(self, job_id: str, timeout_seconds: float = 3600) -> dict[str, Any]:
        """Poll /status with a gentle backoff until the job reaches a final state.

        Giving up (the timeout, or Ctrl-C) cancels the job: RunPod stops it on its worker.
        """
        deadline = time.monotonic() + timeout_seconds
        delay = 1.0
        try:
            while True:
                status = self.status(job_id)
                if status.get("status") in FINAL_STATES:
                    return status
                if time.monotonic() > deadline:
                    outcome = "cancelled it" if self._try_cancel(job_id) else "could not cancel it"
                    raise TimeoutError(
                        f"job {job_id} still {status.get('status')} after {timeout_seconds} s; {outcome}"
                    )
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 1.5, 10.0)
        except KeyboardInterrupt:
            self._try_cancel(job_id)
            raise

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask RunPod to stop a queued or running job (POST /cancel/{id})."""
        reply = self.session.post(f"{self.base_url}/cancel/{job_id}", timeout=30)
        reply.raise_for_status()
        return reply.json()

    def status(self, job_id: str) -> dict[str, Any]:
        url = f"{self.base_url}/status/{job_id}"
        reply = self.session.get(url, timeout=60)
        if reply.status_code == 405:  # the RunPod SDK's local test server only answers POST here
            reply = self.session.post(url, timeout=600)
        reply.raise_for_status()
        return reply.json()

    def _try_cancel(self, job_id: str) -> bool:
        """Cancel without masking why we gave up (the SDK's local test API has no /cancel)."""
        try:
            self.cancel(job_id)
            return True
        except requests.RequestException as error:
            print(f"could not cancel job {job_id}: {error}", file=sys.stderr)
            return False

    def batch(self, job_inputs: Iterable[dict[str, Any]], timeout_seconds: float = 3600) -> list[dict[str, Any]]:
        """Queue every job first (RunPod scales workers out), then collect results in order."""
        job_ids = [self.submit(job_input) for job_input in job_inputs]
        return [self.wait(job_id, timeout_seconds) for job_id in job_ids]

    def _post(self, route: str, job_input: dict[str, Any], timeout: float, **extra: Any) -> dict[str, Any]:
        body = {"input": job_input, **{key: value for key, value in extra.items() if value}}
        reply = self.session.post(f"{self.base_url}/{route}", json=body, timeout=timeout)
        reply.raise_for_status()
        return reply.json()


def save_video(status: dict[str, Any], folder: Path) -> Path:
    """Write a finished job's MP4 (inline or from its presigned URL); raises with the job's error."""
    if status.get("status") != "COMPLETED":
        raise RuntimeError(f"job {status.get('id')} {status.get('status')}: {status.get('error')}")
    output = status["output"]
    target = folder / f"{status['id']}.mp4"
    if "video_base64" in output:
        target.write_bytes(base64.b64decode(output["video_base64"]))
    else:
        with requests.get(output["video_url"], stream=True, timeout=120) as download:
            download.raise_for_status()
            with open(target, "wb") as file:
                for chunk in download.iter_content(1 << 20):
                    file.write(chunk)
    return target


def _media_field(kind: str, source: str) -> dict[str, str]:
    if source.startswith(("http://", "https://")):
        return {f"{kind}_url": source}
    return {f"{kind}_file": base64.b64encode(Path(source).read_bytes()).decode("ascii")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-id", help="the RunPod endpoint id")
    parser.add_argument("--base-url", help="instead of --endpoint-id: the endpoint's base URL")
    parser.add_argument("--image", help="portrait: a path or an http(s) URL")
    parser.add_argument("--avatar-id", help="a preset portrait instead of --image")
    parser.add_argument("--audio", action="append", required=True, help="speech: a path or URL (repeat for a batch)")
    parser.add_argument("--mode", choices=("runsync", "async", "batch"), default="runsync")
    parser.add_argument("--resolution", default="832*480")
    parser.add_argument("--output-type", choices=("auto", "base64", "s3"), default="auto")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds to wait for a job before cancelling it (default 3600)")
    args = parser.parse_args(argv)
    if not (args.base_url or args.endpoint_id):
        parser.error("give --endpoint-id (or --base-url)")
    if not (args.image or args.avatar_id):
        parser.error("give --image or --avatar-id")

    client = TalkingHeadClient(args.base_url or f"{RUNPOD_API}/{args.endpoint_id}", os.environ.get("RUNPOD_API_KEY"))
    options = {"resolution": args.resolution, "output_type": args.output_type}
    if args.seed is not None:
        options["seed"] = args.seed
    inputs = [client.job_input(args.image, audio, args.avatar_id, **options) for audio in args.audio]

    started = time.monotonic()
    try:
        if args.mode == "runsync":
            results = [client.runsync(job_input, args.timeout) for job_input in inputs]
        elif args.mode == "async":
            results = [client.wait(client.submit(job_input), args.timeout) for job_input in inputs]
        else:
            results = client.batch(inputs, args.timeout)
    except TimeoutError as error:
        print(error, file=sys.stderr)
        return 1
    failed = 0
    for status in results:
        try:
            path = save_video(status, args.out)
            print(f"{status['id']}: {path} ({status['output']['duration_seconds']:.1f} s of video)")
        except RuntimeError as error:
            failed += 1
            print(error, file=sys.stderr)
    print(f"{len(results) - failed}/{len(results)} done in {time.monotonic() - started:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
