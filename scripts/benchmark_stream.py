"""How soon a stream job's first segment leaves the worker, and what streaming costs in total time.

Usage: python scripts/benchmark_stream.py [--seconds 60] [--resolution 512*512] [--backend lite] [--mode M]
       taskset -c 0 python scripts/benchmark_stream.py      # the issue's one-core figure

Runs the same job twice through the worker's own RunPod handler, in-process: once with
`"stream": true` through the generator handler (STREAM_RESULTS=1), once without. Prints the time
from the job's start to the first segment item, to the last one and to the result, the segments'
count and sizes, and the plain job's total time. The speech is the bundled sample, looped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import imageio_ffmpeg

from handler.runpod_handler import RunPodHandler
from handler.sample import SAMPLE_SPEECH, sample_job_input
from handler.startup import start_worker
from model.registry import BACKENDS


def looped_speech(seconds: float, folder: Path) -> bytes:
    path = folder / "speech.wav"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-stream_loop", "-1", "-i", str(SAMPLE_SPEECH),
                    "-t", f"{seconds}", str(path)], check=True)
    return path.read_bytes()


async def timed_items(handler: RunPodHandler, job: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    started = time.monotonic()
    return [(time.monotonic() - started, item) async for item in handler.stream(job, {})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the speech")
    parser.add_argument("--resolution", default="512*512")
    cpu_backend = next(name for name, entry in BACKENDS.items() if not entry.needs_gpu)
    parser.add_argument("--backend", default=cpu_backend, choices=list(BACKENDS))
    parser.add_argument("--mode", default=None, help="quality or fast (diffusion backends)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        speech = base64.b64encode(looped_speech(args.seconds, Path(tmp))).decode()
    worker = start_worker({**os.environ, "MODEL_BACKEND": args.backend, "STREAM_RESULTS": "1"})
    if worker.startup_error is not None:
        raise SystemExit(f"the worker did not start: {worker.startup_error}")
    handler = RunPodHandler(worker)
    fields: dict[str, Any] = {"audio_file": speech, "resolution": args.resolution, "output_type": "auto"}
    if args.mode:
        fields["mode"] = args.mode

    streamed = asyncio.run(timed_items(handler, {"id": "bench-stream", "input": sample_job_input(**fields,
                                                                                                  stream=True)}))
    result = streamed[-1][1]
    if not result.get("success"):
        raise SystemExit(f"the stream job failed: {result}")
    segments = [(at, item["segment"]) for at, item in streamed if "segment" in item]
    started = time.monotonic()
    plain = worker.handle({"id": "bench-plain", "input": sample_job_input(**fields)})
    plain_seconds = time.monotonic() - started
    if not plain.get("success"):
        raise SystemExit(f"the plain job failed: {plain}")

    sizes = [len(base64.b64decode(segment["data_base64"])) for _, segment in segments]
    largest_item = max(len(json.dumps({"output": item})) for _, item in streamed)
    print(f"backend {worker.loaded_backend.name}, mode {result['mode']}, {result['width']}x{result['height']}, "
          f"{result['duration_seconds']:.1f} s of video ({result['num_frames']} frames), "
          f"{os.cpu_count()} CPUs visible, {len(os.sched_getaffinity(0))} usable")
    print(f"first segment       {segments[0][0]:7.2f} s after the job started "
          f"({segments[0][1]['end_seconds']:.2f} s of video)")
    print(f"last segment        {segments[-1][0]:7.2f} s")
    print(f"stream job total    {streamed[-1][0]:7.2f} s  (timings {result['timings']})")
    print(f"plain job total     {plain_seconds:7.2f} s  (timings {plain['timings']})")
    print(f"segments            {len(segments)}, {sum(sizes) / 1e6:.2f} MB in all, largest {max(sizes) / 1e3:.0f} kB; "
          f"largest stream item {largest_item / 1e3:.0f} kB (RunPod's limit: 1000 kB); "
          f"plain MP4 {plain['file_size_bytes'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
