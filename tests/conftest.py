"""Real servers on 127.0.0.1 for the tests: the worker's RunPod API, an S3 server, a media host."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

# One compute thread in every test process and every worker a test starts (they inherit the
# environment), set before torch is first imported: the suite already runs one process per core,
# and OpenMP threads that outnumber the free cores spin waiting for each other (on a loaded 2-core
# machine a tiny-Wan job cost 17-38 CPU-seconds with two threads, 2 with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"

TEST_BUCKET = "talking-head-test"
S3_ACCESS_KEY = "test-access-key"
S3_SECRET_KEY = "test-secret-key-never-logged"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 with an empty bucket; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY, region_name="us-east-1",
    )
    client.create_bucket(Bucket=TEST_BUCKET)
    yield endpoint
    server.stop()


class _MediaHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, plus `/redirect?to=URL` for redirect tests."""

    def do_GET(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == "/redirect":
            target = urllib.parse.parse_qs(parsed.query)["to"][0]
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="session")
def media_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a folder; yields (base URL, folder)."""
    folder = tmp_path_factory.mktemp("media")
    for asset in ASSETS.iterdir():
        shutil.copy(asset, folder / asset.name)
    handler = functools.partial(_MediaHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


class WorkerProcess:
    """`python -m handler --rp_serve_api` on 127.0.0.1, with its log and its own temp folder."""

    def __init__(self, env: dict[str, str], workdir: Path, extra_pythonpath: tuple[Path, ...] = (),
                 ready_timeout: float = 120.0, root: Path = ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(parents=True)
        self.log_path = workdir / "worker.log"
        full_env = {
            key: value for key, value in os.environ.items() if not key.startswith(("BUCKET_", "RUNPOD_", "HF_"))
        }
        full_env.update(env)
        full_env["TMPDIR"] = str(self.tmpdir)
        full_env["PYTHONPATH"] = os.pathsep.join(str(path) for path in (root, *extra_pythonpath))
        self._log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "handler", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
             "--rp_api_port", str(self.port)],
            cwd=workdir, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{self.url}/docs", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"worker did not start within {timeout} s:\n{self.log()}")

    def runsync(self, job_input: dict, **extra) -> dict:
        response = requests.post(f"{self.url}/runsync", json={"input": job_input, **extra}, timeout=600)
        response.raise_for_status()
        return response.json()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def presets_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("presets")
    (folder / "astronaut").mkdir()
    shutil.copy(ASSETS / "portrait.jpg", folder / "astronaut" / "portrait.jpg")
    return folder


@pytest.fixture(scope="session")
def worker(tmp_path_factory, s3_server, presets_dir) -> Iterator[WorkerProcess]:
    """The lite worker with a bucket configured (so output_type "auto" uploads) and presets."""
    process = WorkerProcess(
        {
            "MODEL_BACKEND": "lite",
            "ALLOW_PRIVATE_URLS": "1",
            "PRESET_AVATARS_DIR": str(presets_dir),
            "BUCKET_ENDPOINT_URL": s3_server,
            "BUCKET_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "BUCKET_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "BUCKET_NAME": TEST_BUCKET,
            "URL_EXPIRY_SECONDS": "600",
            "MAX_AUDIO_SECONDS": "120",
            "MAX_INPUT_BYTES": str(8 * 1024 * 1024),
        },
        tmp_path_factory.mktemp("worker"),
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def plain_worker(tmp_path_factory) -> Iterator[WorkerProcess]:
    """The lite worker as a newcomer runs it: no bucket, no presets, default limits."""
    process = WorkerProcess(
        {"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1"},
        tmp_path_factory.mktemp("plain-worker"),
    )
    yield process
    process.stop()


@pytest.fixture
def one_cpu_thread():
    """Pin torch to one thread for the test: parallel reductions sum in another order, and loops
    compared in float over several clips must not depend on the machine's core count."""
    import torch  # only the model tests need it

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
