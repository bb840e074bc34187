"""Whole jobs through the worker (decode → model → MP4 → base64) for growing speech lengths.

Prints, per length: job seconds, seconds of video per second of wall time, and the process's
peak RSS, each length in a fresh process so the peaks are its own. Memory should stay flat in
the video's length: frames are streamed into ffmpeg, never held.

    .venv/bin/python scripts/benchmark_worker.py [--seconds 10 60] [--resolution 512*512]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_one(seconds: float, resolution: str) -> dict:
    import base64

    import numpy as np
    import soundfile

    from handler.sample import SAMPLE_SPEECH, sample_job_input
    from handler.startup import start_worker

    speech, rate = soundfile.read(SAMPLE_SPEECH, dtype="float32")
    repeated = np.tile(speech, int(np.ceil(seconds * rate / len(speech))))[: int(seconds * rate)]
    buffer = io.BytesIO()
    soundfile.write(buffer, repeated, rate, format="WAV")
    worker = start_worker()
    baseline_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    job_input = sample_job_input(audio_file=base64.b64encode(buffer.getvalue()).decode(), resolution=resolution)
    started = time.monotonic()
    result = worker.handle({"id": "benchmark", "input": job_input})
    elapsed = time.monotonic() - started
    if "error" in result:
        raise SystemExit(result["error"])
    return {
        "speech_seconds": seconds,
        "size": f"{result['width']}x{result['height']}",
        "model": result["model"],
        "job_seconds": round(elapsed, 2),
        "video_seconds_per_wall_second": round(result["duration_seconds"] / elapsed, 1),
        "mp4_mb": round(result["file_size_bytes"] / 1e6, 2),
        "peak_rss_mib_after_start": round(baseline_mib),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "timings": result["timings"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--resolution", default="512*512")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.seconds[0], args.resolution)))
        return
    for seconds in args.seconds:
        line = subprocess.run(
            [sys.executable, __file__, "--one", "--seconds", str(seconds), "--resolution", args.resolution],
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]
        print(line)


if __name__ == "__main__":
    main()
