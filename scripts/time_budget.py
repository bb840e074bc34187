"""How much speech fits an execution timeout, per backend, mode and GPU: the table in README.md.

    python scripts/time_budget.py                 # the Markdown table README.md shows
    python scripts/time_budget.py --timeout 900   # the longest speech that fits 900 s

The figures are model/speed.py's: data/costs.toml's measured rows, else a backend's declared
conservative default; each at the mode's default video size. The worker refuses a job whose
estimate exceeds EXECUTION_TIMEOUT_SECONDS, and the deploy tool sizes the timeout the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # python scripts/time_budget.py
    sys.path.insert(0, str(ROOT))

from model.registry import BACKENDS  # noqa: E402
from model.speed import estimate, measured  # noqa: E402

# RunPod's default execution timeout, and the deploy tool's former hour
TIMEOUTS = (600, 3600)
UNMEASURED = "any other"


def rows(timeouts: tuple[int, ...]) -> list[list[str]]:
    table = []
    for entry in BACKENDS.values():
        for mode in entry.modes:
            area = entry.default_max_area(mode)
            devices = sorted({gpu for backend, row_mode, gpu, _, _ in measured() if (backend, row_mode) ==
                              (entry.name, mode)}) + [UNMEASURED if entry.needs_gpu else "cpu"]
            for device in devices:
                expected = estimate(entry, mode, area, device)
                fits = [f"{expected.longest_speech(timeout):.0f} s" for timeout in timeouts]
                table.append([entry.name, mode, device, f"{expected.seconds_per_video_second:.3g}",
                              f"{expected.overhead_seconds:.0f} s", *fits])
    return table


def markdown(timeouts: tuple[int, ...] = TIMEOUTS) -> str:
    header = ["backend", "mode", "device", "s per video-s", "per job", *(f"fits {t} s" for t in timeouts)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(timeouts)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=int, action="append", help="an execution timeout in seconds")
    args = parser.parse_args(argv)
    print(markdown(tuple(args.timeout) if args.timeout else TIMEOUTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
