"""What a talking-head video costs to make, per GPU and mode, and for a whole workload.

    python scripts/cost.py --videos-per-day 20 --video-seconds 300
    python scripts/cost.py --videos-per-day 20 --video-seconds 300 --json
    python scripts/cost.py --videos-per-day 20 --video-seconds 300 --plot monthly.png
    python scripts/cost.py ... --benchmark h100.json   # figures of scripts/benchmark_gpu.py --json

From the GPU time the project measured and the dated prices in data/costs.toml (each row with its
source and date; a row without them is refused), it prints for every measured GPU, mode and video
size, and every offer of that GPU:

    $ per video-second   = GPU-seconds per video-second x $ per GPU-second
                           (always-on: what the second costs while the GPU is kept busy)
    $ per video          = $ per video-second x --video-seconds
    a day of the workload:
      flex (serverless)  = (videos x seconds x GPU-s per video-s + cold starts x cold-start s) x $ per GPU-second
      always-on          = the GPUs the day's work needs running around the clock, in whole rentable
                           units: ceil(GPU-seconds a day / 86400) GPUs, rounded up to the unit
                           (8 on p5.48xlarge), x 24 h x $ per GPU-hour
      a month            = a day x 365.25 / 12
    break-even utilisation = an always-on GPU's $ per second / flex $ per second for the same GPU:
                           the share of the day a GPU must be busy for always-on to cost less
                           (above 100%: never); also as videos a day per GPU.

The figures are one backend's (--backend, default the registry's first; each row of the data file
names its backend). Each offer uses the figure of the memory mode the worker would pick on its GPU
(the largest that fits, as the backend declares its memory modes) unless --memory-mode names one.
A mode or a GPU without a measurement is named as such and left out of the figures: nothing is extrapolated.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, which the RunPod SDK installs
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # python scripts/cost.py
    sys.path.insert(0, str(ROOT))

from model.declaration import GpuNeed  # noqa: E402
from model.registry import ALL_MODES as MODES  # noqa: E402
from model.registry import BACKENDS, DEFAULT_BACKEND  # noqa: E402
from scripts.endpoint_compute import GPU_NEEDS, MEMORY_MODES  # noqa: E402

DATA = ROOT / "data" / "costs.toml"
SECONDS_PER_DAY = 86_400
DAYS_PER_MONTH = 365.25 / 12
BILLINGS = ("flex", "always-on")


class DataError(ValueError):
    """A row of the data file (or a benchmark file) that cannot be used, and why."""


@dataclasses.dataclass(frozen=True)
class Measured:
    backend: str
    gpu: str
    device: str
    mode: str
    memory_mode: str
    width: int
    height: int
    gpu_seconds_per_video_second: float
    source: str
    date: datetime.date

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclasses.dataclass(frozen=True)
class Price:
    provider: str
    offer: str
    billing: str
    cards: tuple[str, ...]
    memory_gb: int
    usd_per_gpu_second: float
    source: str
    date: datetime.date
    #: GPUs in the smallest unit that can be rented
    gpus: int = 1
    #: RunPod's GPU pool id, for serverless offers
    pool: str | None = None
    note: str | None = None

    @property
    def usd_per_gpu_hour(self) -> float:
        return self.usd_per_gpu_second * 3600


@dataclasses.dataclass(frozen=True)
class Costs:
    measured: tuple[Measured, ...]
    prices: tuple[Price, ...]


# --- The data file ----------------------------------------------------------------------------


def load_costs(path: Path = DATA) -> Costs:
    """The measured figures and prices of a data file; DataError names the first row that cannot be used."""
    if tomllib is None:
        raise DataError(f"reading {path} needs Python 3.11 or the tomli package.")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise DataError(f"{path}: {error}") from None
    measured = tuple(_measured(path, number, row) for number, row in enumerate(data.get("measured", []), 1))
    prices = tuple(_price(path, number, row) for number, row in enumerate(data.get("price", []), 1))
    if not prices:
        raise DataError(f"{path}: no [[price]] rows")
    return Costs(measured, prices)


def _dated(path: Path, what: str, row: dict[str, Any]) -> tuple[str, datetime.date]:
    """A row's source and date, which every row must have."""
    source, date = row.get("source"), row.get("date")
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"{path}: {what} has no source; name where its figure was read (a URL or a script).")
    if isinstance(date, str):
        try:
            date = datetime.date.fromisoformat(date)
        except ValueError:
            date = None
    if not isinstance(date, datetime.date):
        raise DataError(f"{path}: {what} has no date; give the date its source states, else the day it was read "
                        "(YYYY-MM-DD).")
    return source.strip(), date


def _number(path: Path, what: str, row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DataError(f"{path}: {what} needs {key}, a positive number, not {value!r}.")
    return float(value)


def _measured(path: Path, number: int, row: dict[str, Any]) -> Measured:
    what = f"[[measured]] row {number} ({row.get('gpu')} {row.get('mode')} {row.get('width')}x{row.get('height')})"
    source, date = _dated(path, what, row)
    need = GPU_NEEDS.get(str(row.get("backend")))
    if need is None:
        raise DataError(f"{path}: {what} needs backend, one of the GPU backends {', '.join(GPU_NEEDS)}.")
    modes = BACKENDS[row["backend"]].modes
    if row.get("mode") not in modes:
        raise DataError(f"{path}: {what} needs mode, one of {', '.join(modes)}.")
    if row.get("memory_mode") not in need.memory_gb:
        raise DataError(f"{path}: {what} needs memory_mode, one of {', '.join(need.memory_gb)}.")
    return Measured(
        backend=row["backend"], gpu=str(row.get("gpu") or ""), device=str(row.get("device") or row.get("gpu")),
        mode=row["mode"],
        memory_mode=row["memory_mode"], width=int(_number(path, what, row, "width")),
        height=int(_number(path, what, row, "height")),
        gpu_seconds_per_video_second=_number(path, what, row, "gpu_seconds_per_video_second"), source=source, date=date,
    )


def _price(path: Path, number: int, row: dict[str, Any]) -> Price:
    what = f"[[price]] row {number} ({row.get('provider')}, {row.get('offer')})"
    source, date = _dated(path, what, row)
    if row.get("billing") not in BILLINGS:
        raise DataError(f"{path}: {what} needs billing, one of {', '.join(BILLINGS)}.")
    cards = row.get("cards")
    if not isinstance(cards, list) or not cards or not all(isinstance(card, str) and card for card in cards):
        raise DataError(f"{path}: {what} needs cards, the GPU families it may give, e.g. [\"H100\"].")
    given = [key for key in ("usd_per_second", "usd_per_gpu_hour") if key in row]
    if len(given) != 1:
        raise DataError(f"{path}: {what} needs exactly one of usd_per_second and usd_per_gpu_hour, as its source "
                        "states the price.")
    per_second = _number(path, what, row, given[0]) / (1 if given[0] == "usd_per_second" else 3600)
    return Price(
        provider=str(row.get("provider") or ""), offer=str(row.get("offer") or ""), billing=row["billing"],
        cards=tuple(cards), memory_gb=int(_number(path, what, row, "memory_gb")), usd_per_gpu_second=per_second,
        source=source, date=date, gpus=int(_number(path, what, {"gpus": 1, **row}, "gpus")), pool=row.get("pool"),
        note=row.get("note"),
    )


@functools.lru_cache(maxsize=4)
def flex_prices(path: Path = DATA) -> dict[str, float]:
    """RunPod's flex price per GPU-second of each GPU pool the data file prices (scripts/endpoint_compute.py)."""
    return {price.pool: price.usd_per_gpu_second for price in load_costs(path).prices
            if price.pool is not None and price.billing == "flex"}


def measured_from_benchmark(path: Path, families: Iterable[str], backend: str) -> list[Measured]:
    """The rows of a `scripts/benchmark_gpu.py --json` file of `backend`, for the GPU family its device names."""
    try:
        data = json.loads(path.read_text())
        device, results = str(data["gpu"]), list(data["results"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a file of scripts/benchmark_gpu.py --json ({error}).") from None
    named = [family for family in families if family.replace(" ", "").upper() in device.replace(" ", "").upper()]
    if not named:
        raise DataError(f"{path}: its GPU {device!r} is none of the families data/costs.toml prices "
                        f"({', '.join(sorted(set(families)))}).")
    family = max(named, key=len)  # "L40S", not "L40"
    date = datetime.date.fromtimestamp(path.stat().st_mtime)
    rows = []
    for row in results:
        if "error" in row or "gpu_seconds_per_video_second" not in row:
            continue
        rows.append(Measured(
            backend=backend, gpu=family, device=device, mode="fast" if row.get("resolution") == "fast" else "quality",
            memory_mode=row["mode"], width=int(row["width"]), height=int(row["height"]),
            gpu_seconds_per_video_second=float(row["gpu_seconds_per_video_second"]),
            source=f"{path.name} (scripts/benchmark_gpu.py --json)", date=date,
        ))
    return rows


def memory_mode_for(need: GpuNeed, memory_gb: int) -> str:
    """The largest of a backend's memory modes that fits a GPU, as the worker picks it."""
    modes = need.memory_gb
    fitting = [mode for mode, needed in modes.items() if needed <= memory_gb]
    if not fitting:
        return min(modes, key=modes.__getitem__)
    return max(fitting, key=modes.__getitem__)


# --- The arithmetic ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    videos_per_day: float
    video_seconds: float
    #: None: not measured, left out
    cold_start_seconds: float | None
    cold_starts_per_day: float

    def gpu_seconds_per_day(self, figure: Measured) -> float:
        return self.videos_per_day * self.video_seconds * figure.gpu_seconds_per_video_second


@dataclasses.dataclass(frozen=True)
class Line:
    """One offer, priced with one measured figure for one workload."""

    figure: Measured
    price: Price
    usd_per_video_second: float
    usd_per_video: float
    #: flex: GPUs busy on average; always-on: GPUs rented (whole units)
    gpus: float
    usd_per_day: float
    usd_per_month: float
    break_even_utilisation: float | None
    break_even_videos_per_day: float | None


def price_line(figure: Measured, price: Price, flex: Price | None, workload: Workload) -> Line:
    g, p = figure.gpu_seconds_per_video_second, price.usd_per_gpu_second
    busy = workload.gpu_seconds_per_day(figure)
    if price.billing == "flex":
        gpus = busy / SECONDS_PER_DAY
        per_day = (busy + workload.cold_starts_per_day * (workload.cold_start_seconds or 0.0)) * p
        utilisation = videos = None
    else:
        units = math.ceil(max(1, math.ceil(busy / SECONDS_PER_DAY)) / price.gpus)
        gpus = units * price.gpus
        per_day = gpus * SECONDS_PER_DAY * p
        utilisation = p / flex.usd_per_gpu_second if flex is not None else None
        videos = utilisation * SECONDS_PER_DAY / (workload.video_seconds * g) if utilisation is not None else None
    return Line(figure, price, g * p, g * p * workload.video_seconds, gpus, per_day, per_day * DAYS_PER_MONTH,
                utilisation, videos)


def monthly_cost(figure: Measured, price: Price, workload: Workload) -> float:
    """A month of `workload` on `price`: the same arithmetic as price_line, for the plot."""
    return price_line(figure, price, None, workload).usd_per_month


@dataclasses.dataclass(frozen=True)
class Group:
    """Every offer of one GPU family for one mode and size."""

    gpu: str
    mode: str
    size: str
    lines: tuple[Line, ...]


def build_groups(costs: Costs, workload: Workload, mode: str | None, size: str | None,
                 memory_mode: str | None, backend: str = DEFAULT_BACKEND) -> list[Group]:
    need = GPU_NEEDS[backend]
    measured = [m for m in costs.measured if m.backend == backend]
    keys = sorted({(m.gpu, m.mode, m.size, m.width * m.height) for m in measured
                   if (mode is None or m.mode == mode) and (size is None or m.size == size)},
                  key=lambda key: (key[0], MODES.index(key[1]), key[3]))
    groups = []
    for gpu, group_mode, group_size, _ in keys:
        offers = [price for price in costs.prices if gpu in price.cards]
        flex = min((price for price in offers if price.billing == "flex"), key=lambda price: price.usd_per_gpu_second,
                   default=None)
        lines = []
        for price in offers:
            wanted = memory_mode or memory_mode_for(need, price.memory_gb)
            figure = next((m for m in measured if (m.gpu, m.mode, m.size, m.memory_mode)
                           == (gpu, group_mode, group_size, wanted)), None)
            if figure is not None:
                lines.append(price_line(figure, price, flex, workload))
        if lines:
            groups.append(Group(gpu, group_mode, group_size, tuple(sorted(lines, key=lambda line: line.usd_per_day))))
    return groups


def unmeasured(costs: Costs) -> list[str]:
    """What cannot be priced, in words."""
    notes = []
    for mode in MODES:
        if not any(m.mode == mode for m in costs.measured):
            notes.append(f"mode {mode}: not measured on a GPU, so not priced; run scripts/benchmark_gpu.py "
                         f"--generations {mode} --json FILE on one and pass --benchmark FILE.")
    measured_gpus = {m.gpu for m in costs.measured}
    offered = sorted({card for price in costs.prices for card in price.cards} - measured_gpus)
    if offered:
        notes.append(f"GPUs priced in the data file but not measured, so not priced per video: {', '.join(offered)}.")
    return notes


# --- Output -----------------------------------------------------------------------------------


def report(costs: Costs, groups: list[Group], workload: Workload) -> dict[str, Any]:
    notes = unmeasured(costs)
    if workload.cold_start_seconds is None:
        notes.append("cold starts: not measured, so the serverless figures leave them out; "
                     "pass --cold-start-seconds S once a worker's start has been timed.")
    notes.append("an offer is priced with its GPU family's figure; variants differ (an H100 PCIe runs lower clocks "
                 "and memory bandwidth than the SXM part), so a figure measured on one is an estimate for another.")
    return {
        "workload": {**dataclasses.asdict(workload), "days_per_month": DAYS_PER_MONTH},
        "notes": notes,
        "measured": [{**_plain(m), "size": m.size} for m in costs.measured],
        "groups": [{"gpu": group.gpu, "mode": group.mode, "size": group.size,
                    "lines": [_line_json(line) for line in group.lines]} for group in groups],
    }


def _plain(row: Measured | Price) -> dict[str, Any]:
    return {key: value.isoformat() if isinstance(value, datetime.date) else value
            for key, value in dataclasses.asdict(row).items()}


def _line_json(line: Line) -> dict[str, Any]:
    price = _plain(line.price)
    price["usd_per_gpu_hour"] = line.price.usd_per_gpu_hour
    return {
        "price": price, "memory_mode": line.figure.memory_mode, "measured_on": line.figure.device,
        "gpu_seconds_per_video_second": line.figure.gpu_seconds_per_video_second,
        **{key: value for key, value in dataclasses.asdict(line).items() if key not in ("figure", "price")},
    }


def render_text(costs: Costs, groups: list[Group], workload: Workload) -> str:
    out = ["Measured GPU time, GPU-seconds per second of video:"]
    for m in costs.measured:
        out.append(f"  {m.device:<12} {m.mode:<8} {m.size:>9}  {m.memory_mode:<8} {m.gpu_seconds_per_video_second:7.1f}"
                   f"   {m.source}, {m.date}")
    per_day = workload.videos_per_day * workload.video_seconds
    out += ["", f"Workload: {workload.videos_per_day:g} videos a day of {workload.video_seconds:g} s "
                f"({per_day:g} s of video a day), a month = {DAYS_PER_MONTH:.2f} days."]
    header = (f"  {'provider':<18} {'offer':<44} {'billing':<9} {'$/GPU-h':>8} {'$/video-s':>9} "
              f"{'$/video':>8} {'GPUs':>5} {'$/day':>9} {'$/month':>10}  break-even")
    for group in groups:
        figure = group.lines[0].figure
        out += ["", f"{group.gpu}, mode {group.mode}, {group.size}: {workload.gpu_seconds_per_day(figure):,.0f} "
                    f"GPU-s a day ({workload.gpu_seconds_per_day(figure) / SECONDS_PER_DAY:.2f} GPUs busy around "
                    "the clock); cheapest first", header]
        for line in group.lines:
            out.append(_text_line(line))
    out += ["", "$/video-s and $/video of an always-on GPU: while it is kept busy. break-even: the share of the day a "
                "GPU must be busy for the always-on offer to cost less than the cheapest flex one of the same GPU, "
                "and as videos a day per GPU.", ""]
    out += [f"Note: {note}" for note in report(costs, groups, workload)["notes"]]
    out += ["", "Prices (source, date):"]
    for price in costs.prices:
        out.append(f"  {price.provider}, {price.offer}: {price.source}, {price.date}"
                   + (f" ({price.note})" if price.note else ""))
    return "\n".join(out)


def _text_line(line: Line) -> str:
    price = line.price
    gpus = f"{line.gpus:.2f}" if price.billing == "flex" else f"{line.gpus:.0f}"
    if line.break_even_utilisation is None:
        even = "-"
    elif line.break_even_utilisation >= 1:
        even = f"{line.break_even_utilisation:.0%}: never"
    else:
        even = f"{line.break_even_utilisation:.0%} ({line.break_even_videos_per_day:.1f} videos/day/GPU)"
    return (f"  {price.provider:<18} {price.offer[:44]:<44} {price.billing:<9} {price.usd_per_gpu_hour:8.3f} "
            f"{line.usd_per_video_second:9.4f} {line.usd_per_video:8.2f} {gpus:>5} {line.usd_per_day:9.2f} "
            f"{line.usd_per_month:10.2f}  {even}")


def plot(group: Group, workload: Workload, path: Path) -> None:
    """A PNG of each offer's monthly cost against videos a day, for `group`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    most = max(10, math.ceil(2 * workload.videos_per_day))
    counts = list(range(0, most + 1))
    figure, axes = plt.subplots(figsize=(10, 6))
    for line in group.lines:
        monthly = [monthly_cost(line.figure, line.price, dataclasses.replace(
            workload, videos_per_day=count, cold_starts_per_day=count * _cold_starts_per_video(workload)))
            for count in counts]
        style = "-" if line.price.billing == "flex" else "--"
        drawstyle = "default" if line.price.billing == "flex" else "steps-post"
        axes.plot(counts, monthly, style, drawstyle=drawstyle, label=f"{line.price.provider}: {line.price.offer}")
    axes.axvline(workload.videos_per_day, color="grey", linewidth=0.8)
    axes.set_xlabel(f"videos a day, {workload.video_seconds:g} s each")
    axes.set_ylabel("US$ a month")
    axes.set_title(f"{group.gpu}, mode {group.mode}, {group.size}: serverless (solid) and always-on (dashed)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _cold_starts_per_video(workload: Workload) -> float:
    return workload.cold_starts_per_day / workload.videos_per_day if workload.videos_per_day else 1.0


# --- The command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos-per-day", type=float, required=True)
    parser.add_argument("--video-seconds", type=float, required=True, help="length of one video")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="write a PNG of monthly cost against videos a day")
    parser.add_argument("--data", type=Path, default=DATA, help=f"the data file (default {DATA.relative_to(ROOT)})")
    parser.add_argument("--benchmark", type=Path, action="append", default=[], metavar="FILE",
                        help="also the figures of scripts/benchmark_gpu.py --json FILE (they replace the data "
                             "file's for the same GPU, mode, memory mode and size)")
    parser.add_argument("--mode", choices=MODES, help="only this mode")
    parser.add_argument("--size", help="only this video size, e.g. 832x448")
    parser.add_argument("--backend", choices=list(GPU_NEEDS), default=DEFAULT_BACKEND,
                        help="whose figures (default %(default)s)")
    parser.add_argument("--memory-mode", choices=list(MEMORY_MODES),
                        help="price every offer with this memory mode's figure (default: the largest that fits)")
    parser.add_argument("--cold-start-seconds", type=float, help="seconds a serverless worker's start bills "
                                                                  "(default: not measured, left out)")
    parser.add_argument("--cold-starts-per-day", type=float,
                        help="default: one per video (videos spread over the day each find no warm worker)")
    args = parser.parse_args(argv)
    if args.videos_per_day < 0 or args.video_seconds <= 0:
        parser.error("--videos-per-day must be at least 0 and --video-seconds more than 0")
    try:
        costs = load_costs(args.data)
        families = [card for price in costs.prices for card in price.cards]
        extra = [row for path in args.benchmark for row in measured_from_benchmark(path, families, args.backend)]
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    replaced = {(m.backend, m.gpu, m.mode, m.memory_mode, m.size) for m in extra}
    costs = dataclasses.replace(costs, measured=tuple(
        [m for m in costs.measured if (m.backend, m.gpu, m.mode, m.memory_mode, m.size) not in replaced] + extra))
    workload = Workload(args.videos_per_day, args.video_seconds, args.cold_start_seconds,
                        args.videos_per_day if args.cold_starts_per_day is None else args.cold_starts_per_day)
    groups = build_groups(costs, workload, args.mode, args.size, args.memory_mode, args.backend)
    if not groups:
        print("error: nothing measured matches --mode/--size/--memory-mode; see the data file's [[measured]] rows",
              file=sys.stderr)
        return 2
    print(json.dumps(report(costs, groups, workload), indent=2) if args.json else render_text(costs, groups, workload))
    if args.plot:
        plot(groups[0], workload, args.plot)
        print(f"plot of {groups[0].gpu}, {groups[0].mode}, {groups[0].size}: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
