"""A soak of the always-on server: many mixed jobs in a row, and whether its resources stay flat.

    python scripts/benchmark_soak.py [--jobs 200] [--every 50] [--json]

Starts `python -m handler.http_server` on 127.0.0.1 with the backend that runs without a GPU (its own TMPDIR,
ALLOW_PRIVATE_URLS=1 so that a URL input may reach this script's own slow server on 127.0.0.1,
FETCH_TIMEOUT_SECONDS=1, MAX_INPUT_BYTES=2 MiB, SERVER_DOWNLOAD_RETENTION_SECONDS=5) and sends
`--jobs` jobs one after another, cycling through good ones and hostile ones: bad base64, an input
over MAX_INPUT_BYTES, an unknown preset, a URL that drips a byte every 0.1 s, and audio bombs built
here with ffmpeg (20 minutes of silence in a small FLAC, 16 channels in a WavPack, 8 channels at
192 kHz). Each kind has the HTTP status it must get; any other is counted as unexpected.

Every `--every` jobs it prints the server process's RSS now and its peak (VmHWM), its open file
descriptors, its threads, the files left in its TMPDIR outside the kept downloads (job scratch
folders), and the kept videos; at the end, whether each figure stayed flat from the first report
to the last (RSS within 10 % or 20 MB, descriptors and threads within 3, no scratch files left),
and how many files the server left in its TMPDIR once it stopped (SIGTERM).
Figures, not assertions: the exit status is 1 only for an unexpected status, a server that died,
or files left behind.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # started as `python scripts/benchmark_soak.py`
    sys.path.insert(0, str(ROOT))

# the backend that runs without a GPU: the soak measures the server, not a model
from model.registry import CPU_BACKEND  # noqa: E402

ASSETS = ROOT / "assets"
MAX_INPUT_BYTES = 2 * 1024 * 1024
FETCH_TIMEOUT_SECONDS = 1
DRIP_SECONDS = 0.1
# Bombs: (name, seconds, rate, channels, ffmpeg codec arguments): small files, refused before decoding.
BOMBS = (
    ("bomb-20-minutes-flac", 1200, 8_000, 1, ("-c:a", "flac")),
    ("bomb-16-channels-wavpack", 10, 48_000, 16, ("-c:a", "wavpack", "-sample_fmt", "s16p")),
    # 8 x 192 kHz for 30 s decodes to more samples than 300 s of 48 kHz stereo (handler/media.py)
    ("bomb-8ch-192k-flac", 30, 192_000, 8, ("-c:a", "flac")),
)
# Flat: RSS within this share or these bytes of the first report's, descriptors and threads within this count.
RSS_SHARE, RSS_BYTES, COUNT_SLACK = 0.10, 20 * 1024 * 1024, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200, help="how many jobs in all (default 200)")
    parser.add_argument("--every", type=int, default=50, help="report every this many jobs (default 50)")
    parser.add_argument("--json", action="store_true", help="also print the reports as one JSON line")
    args = parser.parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # each report as it is made, also into a file
    with tempfile.TemporaryDirectory(prefix="soak-") as work, drip_server() as drip_url:
        folder = Path(work)
        cases = build_cases(folder, drip_url)
        with running_server(folder) as server:
            reports, unexpected, died = soak(server, cases, args.jobs, args.every)
        left = sorted(str(path.relative_to(server.tmpdir)) for path in server.tmpdir.rglob("*"))
    print(f"after the server stopped: {len(left)} files or folders left in its TMPDIR"
          + (f": {left[:5]}" if left else ""))
    verdict = flatness(reports)
    for name, (flat, first, last) in verdict.items():
        print(f"{name:>22}: {'flat' if flat else 'NOT flat'} ({first} -> {last})")
    if unexpected:
        print(f"unexpected answers: {len(unexpected)}")
        for line in unexpected[:10]:
            print(f"  {line}")
    if died:
        print(f"the server died: {died}")
    if args.json:
        print(json.dumps({"reports": reports, "flat": {name: flat for name, (flat, _, _) in verdict.items()},
                          "unexpected": len(unexpected)}))
    return 1 if unexpected or died or left else 0


class Case:
    """One kind of job: how it is sent, and the HTTP status it must get."""

    def __init__(self, name: str, expected: int, files: dict[str, bytes] | None = None,
                 json_body: dict[str, Any] | None = None, data: dict[str, str] | None = None) -> None:
        self.name, self.expected, self.files, self.json_body, self.data = name, expected, files, json_body, data

    def send(self, url: str) -> requests.Response:
        if self.json_body is not None:
            return requests.post(url, json=self.json_body, timeout=300)
        return requests.post(url, files=self.files, data=self.data or {}, timeout=300)


def build_cases(folder: Path, drip_url: str) -> list[Case]:
    speech, portrait = (ASSETS / "speech.wav").read_bytes(), (ASSETS / "portrait.jpg").read_bytes()
    image = base64.b64encode(portrait).decode()
    good = Case("good", 200, files={"audio_file": speech, "image_file": portrait}, data={"resolution": "128*128"})
    cases = [
        good,
        Case("bad-base64", 400, json_body={"input": {"audio_file": "!!! this is not base64 !!!", "image_file": image}}),
        good,
        Case("oversize", 413, files={"audio_file": os.urandom(MAX_INPUT_BYTES + 1024), "image_file": portrait}),
        Case("unknown-preset", 400, json_body={"input": {"audio_file": base64.b64encode(speech).decode(),
                                                         "avatar_id": "nobody-by-this-name"}}),
        Case("slow-drip-url", 422, json_body={"input": {"audio_url": drip_url, "image_file": image}}),
    ]
    for name, seconds, rate, channels, codec in BOMBS:
        path = folder / f"{name}.{'wv' if 'wavpack' in codec else 'flac'}"
        silence(path, seconds, rate, channels, codec)
        cases.append(Case(name, 413, files={"audio_file": path.read_bytes(), "image_file": portrait}))
    return cases


def silence(path: Path, seconds: int, rate: int, channels: int, codec: tuple[str, ...]) -> None:
    pan = f"pan={channels}c|" + "|".join(f"c{index}=c0" for index in range(channels))
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"anullsrc=r={rate}:cl=mono", "-t", str(seconds), "-af", pan, *codec, str(path)],
                   check=True, timeout=600)


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str, tmpdir: Path, log: Path) -> None:
        self.process, self.url, self.tmpdir, self.log = process, url, tmpdir, log


@contextlib.contextmanager
def running_server(folder: Path) -> Iterator[Server]:
    tmpdir = folder / "server-tmp"
    tmpdir.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BUCKET_", "RUNPOD_", "SERVER_"))}
    if CPU_BACKEND is None:
        raise SystemExit("the soak needs a backend that runs without a GPU; the registry lists none")
    env.update(MODEL_BACKEND=CPU_BACKEND, ALLOW_PRIVATE_URLS="1", FETCH_TIMEOUT_SECONDS=str(FETCH_TIMEOUT_SECONDS),
               MAX_INPUT_BYTES=str(MAX_INPUT_BYTES), SERVER_DOWNLOAD_RETENTION_SECONDS="5", TMPDIR=str(tmpdir),
               PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))))
    log = folder / "server.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "handler.http_server", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    server = Server(process, f"http://127.0.0.1:{port}", tmpdir, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited at start:\n{log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{server.url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the server did not start within 120 s")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def soak(server: Server, cases: list[Case], jobs: int, every: int) -> tuple[list[dict[str, Any]], list[str], str]:
    print(f"{jobs} jobs through {server.url}, cycling {len(cases)} kinds: {', '.join(c.name for c in cases)}")
    print(f"{'jobs':>5} {'seconds':>8} {'rss MB':>7} {'peak MB':>8} {'fds':>4} {'threads':>7} "
          f"{'scratch files':>13} {'kept videos':>11}  answers")
    reports: list[dict[str, Any]] = []
    unexpected: list[str] = []
    answers: Counter[str] = Counter()
    started = time.monotonic()
    for number, case in zip(range(1, jobs + 1), itertools.cycle(cases), strict=False):
        if server.process.poll() is not None:
            return reports, unexpected, f"exit status {server.process.returncode} before job {number}"
        try:
            reply = case.send(f"{server.url}/generate")
            status = reply.status_code
        except requests.RequestException as error:
            status, reply = 0, None
            unexpected.append(f"job {number} ({case.name}): {type(error).__name__}")
        answers[f"{case.name} {status}"] += 1
        if status != case.expected and reply is not None:
            unexpected.append(f"job {number} ({case.name}): HTTP {status}, not {case.expected}: {reply.text[:200]}")
        if number % every == 0 or number == jobs:
            report = measure(server, number, time.monotonic() - started)
            reports.append(report)
            print(f"{number:>5} {report['seconds']:>8.1f} {report['rss_mb']:>7.1f} {report['peak_rss_mb']:>8.1f} "
                  f"{report['fds']:>4} {report['threads']:>7} {report['scratch_files']:>13} "
                  f"{report['kept_videos']:>11}  {sum(answers.values())} answered, "
                  f"{len(unexpected)} unexpected")
    print("answers: " + ", ".join(f"{key} x{count}" for key, count in sorted(answers.items())))
    return reports, unexpected, ""


def measure(server: Server, jobs: int, seconds: float) -> dict[str, Any]:
    pid = server.process.pid
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    files = [path for path in server.tmpdir.rglob("*") if path.is_file()]
    kept = [path for path in files if path.parent.name.startswith("talking-head-downloads-") and path.suffix == ".mp4"]
    downloads_locks = [path for path in files if path.parent.name.startswith("talking-head-downloads-")
                       and path.suffix != ".mp4"]
    return {
        "jobs": jobs, "seconds": round(seconds, 1),
        "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 1),
        "peak_rss_mb": round(int(status["VmHWM"].split()[0]) / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"]),
        "scratch_files": len(files) - len(kept) - len(downloads_locks),
        "kept_videos": len(kept),
    }


def flatness(reports: list[dict[str, Any]]) -> dict[str, tuple[bool, Any, Any]]:
    if not reports:
        return {}
    first, last = reports[0], reports[-1]
    rss_slack = max(RSS_BYTES / 1024 / 1024, RSS_SHARE * first["rss_mb"])
    return {
        "rss MB": (last["rss_mb"] - first["rss_mb"] <= rss_slack, first["rss_mb"], last["rss_mb"]),
        "peak rss MB": (last["peak_rss_mb"] - first["peak_rss_mb"] <= rss_slack, first["peak_rss_mb"],
                        last["peak_rss_mb"]),
        "open fds": (last["fds"] - first["fds"] <= COUNT_SLACK, first["fds"], last["fds"]),
        "threads": (last["threads"] - first["threads"] <= COUNT_SLACK, first["threads"], last["threads"]),
        "scratch files left": (all(report["scratch_files"] == 0 for report in reports), first["scratch_files"],
                               last["scratch_files"]),
    }


@contextlib.contextmanager
def drip_server() -> Iterator[str]:
    """A media host on 127.0.0.1 that answers a byte every DRIP_SECONDS (600 bytes: a minute)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()
    body = b"x" * 600
    head = f"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {len(body)}\r\n\r\n".encode()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            conn.sendall(head)
            for byte in body:
                if stopping.is_set():
                    return
                readable, _, _ = select.select([conn], [], [], DRIP_SECONDS)
                if readable and not conn.recv(1):
                    return  # the client hung up
                conn.sendall(bytes([byte]))

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/speech.wav"
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()


if __name__ == "__main__":
    sys.exit(main())
