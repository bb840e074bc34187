"""scripts/cost.py as an operator runs it: figures recomputed by hand, rows without a source or a
date refused, the unmeasured fast mode named and left out, the plot a real PNG."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import tomllib

import pytest
from PIL import Image

from tests.conftest import ROOT

DATA = ROOT / "data" / "costs.toml"
DAYS_PER_MONTH = 365.25 / 12

# A data file whose every figure is round, so that the expected costs below are worked out by hand.
HAND_DATA = """
[[measured]]
backend = "wan-s2v"
gpu = "X100"
device = "X100 test card"
mode = "quality"
memory_mode = "full"
width = 832
height = 448
gpu_seconds_per_video_second = 40.0
source = "a test"
date = 2026-12-01

[[price]]
provider = "Cloud A"
offer = "X100, flex"
billing = "flex"
cards = ["X100"]
memory_gb = 80
usd_per_second = 0.001
source = "https://example.com/a"
date = 2026-12-01

[[price]]
provider = "Cloud B"
offer = "8x X100 box"
billing = "always-on"
cards = ["X100"]
memory_gb = 80
gpus = 8
usd_per_gpu_hour = 1.8
source = "https://example.com/b"
date = "2026-11-30"
"""


def run_cost(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "cost.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def cost_json(*args: str) -> dict:
    result = run_cost(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def lines_of(report: dict, mode: str, size: str) -> dict[str, dict]:
    group = next(group for group in report["groups"] if (group["mode"], group["size"]) == (mode, size))
    return {line["price"]["offer"]: line for line in group["lines"]}


def test_figures_worked_out_by_hand(tmp_path):
    data = tmp_path / "costs.toml"
    data.write_text(HAND_DATA)
    report = cost_json("--videos-per-day", "10", "--video-seconds", "60", "--data", str(data))
    lines = lines_of(report, "quality", "832x448")
    flex, box = lines["X100, flex"], lines["8x X100 box"]
    # 10 videos x 60 s x 40 GPU-s per video-s = 24,000 GPU-s a day.
    assert flex["usd_per_video_second"] == pytest.approx(0.04)  # 40 x 0.001
    assert flex["usd_per_video"] == pytest.approx(2.4)  # 0.04 x 60
    assert flex["usd_per_day"] == pytest.approx(24.0)  # 24,000 x 0.001
    assert flex["usd_per_month"] == pytest.approx(730.5)  # 24 x 30.4375
    assert flex["gpus"] == pytest.approx(24_000 / 86_400)
    # 24,000 GPU-s fit one GPU, but the box is rented whole: 8 GPUs x 24 h x $1.80.
    assert box["gpus"] == 8
    assert box["usd_per_day"] == pytest.approx(345.6)
    assert box["usd_per_month"] == pytest.approx(10_519.2)
    assert box["usd_per_video_second"] == pytest.approx(0.02)  # 40 x 1.8 / 3600
    # $0.0005 a second against $0.001: cheaper when busy more than half the day, 0.5 x 86,400 / (60 x 40) videos.
    assert box["break_even_utilisation"] == pytest.approx(0.5)
    assert box["break_even_videos_per_day"] == pytest.approx(18.0)
    assert flex["break_even_utilisation"] is None

    # A 30 s cold start for each video (the default count) bills 10 x 30 s more a day on flex only.
    lines = lines_of(cost_json("--videos-per-day", "10", "--video-seconds", "60", "--data", str(data),
                               "--cold-start-seconds", "30"), "quality", "832x448")
    assert lines["X100, flex"]["usd_per_day"] == pytest.approx(24.3)
    assert lines["8x X100 box"]["usd_per_day"] == pytest.approx(345.6)


def test_h100_quality_recomputed_from_the_data_files_rows():
    data = tomllib.loads(DATA.read_text())
    wanted = ("H100", "quality", "full", 832, 448)
    g = next(row["gpu_seconds_per_video_second"] for row in data["measured"]
             if (row["gpu"], row["mode"], row["memory_mode"], row["width"], row["height"]) == wanted)
    flex = next(row for row in data["price"] if row.get("pool") == "ADA_80_PRO" and row["billing"] == "flex")
    thunder = next(row for row in data["price"] if row["provider"] == "Thunder Compute"
                   and row["offer"].endswith("production") and row["cards"] == ["H100"])
    p = flex["usd_per_second"]
    lines = lines_of(cost_json("--videos-per-day", "20", "--video-seconds", "300"), "quality", "832x448")

    runpod = lines[flex["offer"]]
    assert runpod["gpu_seconds_per_video_second"] == g and runpod["memory_mode"] == "full"
    assert runpod["usd_per_video_second"] == pytest.approx(g * p)
    assert runpod["usd_per_video"] == pytest.approx(300 * g * p)
    assert runpod["usd_per_day"] == pytest.approx(20 * 300 * g * p)
    assert runpod["usd_per_month"] == pytest.approx(20 * 300 * g * p * DAYS_PER_MONTH)

    box = lines[thunder["offer"]]
    gpus = math.ceil(20 * 300 * g / 86_400)
    assert box["gpus"] == gpus
    assert box["usd_per_day"] == pytest.approx(gpus * 24 * thunder["usd_per_gpu_hour"])
    assert box["break_even_utilisation"] == pytest.approx(thunder["usd_per_gpu_hour"] / 3600 / p)
    # Today's figures, by hand: 50.4 GPU-s per video-s at $0.00116 a GPU-second.
    assert (g, p) == (50.4, 0.00116)
    assert runpod["usd_per_video_second"] == pytest.approx(0.058464)
    assert runpod["usd_per_day"] == pytest.approx(350.784)


@pytest.mark.parametrize("field", ["date", "source"])
def test_a_price_row_without_a_date_or_a_source_is_refused(tmp_path, field):
    text = DATA.read_text()
    start = text.index('provider = "Lambda"')
    end = text.index("[[price]]", start)
    row = text[start:end]
    kept = "\n".join(line for line in row.splitlines() if not line.startswith(f"{field} ="))
    broken = tmp_path / "costs.toml"
    broken.write_text(text[:start] + kept + "\n" + text[end:])
    result = run_cost("--videos-per-day", "20", "--video-seconds", "300", "--data", str(broken))
    assert result.returncode == 2 and result.stdout == ""
    number = text[:start].count("\n[[price]]\n")
    assert f"[[price]] row {number} (Lambda, 1x H100 SXM) has no {field}" in result.stderr, result.stderr


def test_a_measured_row_without_a_date_is_refused(tmp_path):
    broken = tmp_path / "costs.toml"
    broken.write_text(HAND_DATA.replace("date = 2026-12-01\n", "", 1))
    result = run_cost("--videos-per-day", "1", "--video-seconds", "60", "--data", str(broken))
    assert result.returncode == 2
    assert "[[measured]] row 1 (X100 quality 832x448) has no date" in result.stderr


def test_the_fast_mode_is_named_unmeasured_until_a_benchmark_file_measures_it(tmp_path):
    report = cost_json("--videos-per-day", "20", "--video-seconds", "300")
    assert {group["mode"] for group in report["groups"]} == {"quality"}
    assert any(note.startswith("mode fast: not measured on a GPU, so not priced") for note in report["notes"])
    assert any("cold starts: not measured" in note for note in report["notes"])

    # A file as scripts/benchmark_gpu.py --json writes it (its figures are this test's, not a measurement).
    benchmark = tmp_path / "bench.json"
    benchmark.write_text(json.dumps({"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "results": [
        {"mode": "full", "resolution": "fast", "width": 704, "height": 384, "gpu_seconds_per_video_second": 4.0},
        {"mode": "fp8", "resolution": "fast", "error": "OutOfMemoryError: ..."},
    ]}))
    report = cost_json("--videos-per-day", "20", "--video-seconds", "300", "--benchmark", str(benchmark))
    fast = lines_of(report, "fast", "704x384")["H100 PRO, flex"]
    assert fast["measured_on"] == "NVIDIA H100 80GB HBM3"
    assert fast["usd_per_video_second"] == pytest.approx(4.0 * 0.00116)
    assert not any(note.startswith("mode fast") for note in report["notes"])


def test_the_table_is_readable_and_agrees_with_the_json():
    result = run_cost("--videos-per-day", "20", "--video-seconds", "300")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "H100, mode quality, 832x448: 302,400 GPU-s a day (3.50 GPUs busy around the clock)" in text
    row = next(line for line in text.splitlines() if "H100 PRO, flex" in line and "RunPod" in line)
    assert row.split()[-4:] == ["3.50", "350.78", "10676.99", "-"]
    assert "Note: mode fast: not measured on a GPU" in text
    assert "https://docs.runpod.io/serverless/pricing, 2026-12-01" in text


def test_the_plot_is_a_png(tmp_path):
    path = tmp_path / "monthly.png"
    result = run_cost("--videos-per-day", "20", "--video-seconds", "300", "--plot", str(path))
    assert result.returncode == 0, result.stderr
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == (width, height) and width >= 600 and height >= 400
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10, "more than a blank canvas"


def test_every_runpod_pool_the_endpoint_tool_picks_has_a_flex_price():
    from scripts.cost import flex_prices
    from scripts.endpoint_compute import GPU_NEEDS, KNOWN_GPU_POOLS, UNPRICED_POOLS, gpu_pools_for_memory

    prices = flex_prices()
    assert set(KNOWN_GPU_POOLS) - set(UNPRICED_POOLS) <= set(prices), set(KNOWN_GPU_POOLS) - set(prices)
    assert not set(UNPRICED_POOLS) & set(prices), "a priced pool is no longer unpriced"
    # by price first, so an unpriced class comes after every priced one that fits
    for need in GPU_NEEDS.values():
        for memory_gb in need.memory_gb.values():
            assert not set(gpu_pools_for_memory(memory_gb)) & set(UNPRICED_POOLS), memory_gb


def test_the_endpoint_tools_right_sizing_follows_the_price_file(monkeypatch):
    import scripts.cost
    from scripts.endpoint_compute import gpu_pools_for_memory

    # Today's prices: the smallest class that fits is the cheapest, larger ones follow.
    assert gpu_pools_for_memory(48) == ("ADA_48_PRO", "AMPERE_48", "ADA_80_PRO")
    # Were 80 GB cards cheaper per second than 48 GB ones, they would come first.
    prices = dict(scripts.cost.flex_prices())
    monkeypatch.setattr(scripts.cost, "flex_prices", lambda: {**prices, "AMPERE_80": 0.0001})
    assert gpu_pools_for_memory(48) == ("ADA_80_PRO", "AMPERE_80", "ADA_48_PRO")
