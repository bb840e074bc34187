"""`make demo`: run the bundled sample job through the worker and write outputs/demo.mp4."""

from __future__ import annotations

import base64
import logging
import sys
import time
from pathlib import Path

from handler.sample import sample_job_input
from handler.startup import start_worker

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    clock = time.monotonic()
    worker = start_worker()
    ready = time.monotonic() - clock
    result = worker.handle({"id": "demo", "input": sample_job_input()})
    if "error" in result:
        print(f"demo failed: {result['error']}", file=sys.stderr)
        return 1
    output = ROOT / "outputs" / "demo.mp4"
    output.parent.mkdir(exist_ok=True)
    output.write_bytes(base64.b64decode(result["video_base64"]))
    print(f"wrote {output.relative_to(ROOT)}: {result['width']}x{result['height']}, {result['num_frames']} frames "
          f"at {result['fps']:g} fps ({result['duration_seconds']:.2f} s), {result['file_size_bytes'] / 1e6:.2f} MB")
    print(f"model {result['model']}: worker ready in {ready:.2f} s, job took {result['generation_time_seconds']:.2f} s "
          f"(stages: {', '.join(f'{k} {v:.2f} s' for k, v in result['timings'].items())})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
