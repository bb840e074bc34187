"""RunPod's queue on 127.0.0.1, as the SDK's own job loop and a client see it.

The worker side is what runpod-python 1.12 calls when `RUNPOD_WEBHOOK_GET_JOB` is set (rp_job,
rp_http, rp_scale, rp_fitness): `GET .../job-take/<worker>` hands out a job, `GET .../job-stop/<worker>`
(derived by the SDK from the job-take URL) lists jobs to stop, `POST .../job-done/<worker>/<job>`
takes progress (status IN_PROGRESS) and results, `POST .../job-stream/<worker>/<job>` takes a
generator handler's items, `GET /ping/<worker>` takes heartbeats and the fitness checks' unhealthy
report. The client side is the endpoint API the client examples call: `/run`, `/status/<id>`,
`/cancel/<id>`, and `/stream/<id>`, which hands out the items that came since the last call.
Empty polls are held for a moment, as RunPod's long polls are, so that the SDK does not spin.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, free_port

WORKER_ID = "test-worker-1"
ENDPOINT_ID = "test-endpoint"
POLL_HOLD_SECONDS = 0.3
RUNSYNC_HOLD_SECONDS = 2.0


class RunPodPlatform:
    """The queue, the stop channel and the endpoint API, with a record of what the worker sent."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.queue: list[dict[str, Any]] = []
        self.status: dict[str, str] = {}
        self.results: dict[str, dict[str, Any]] = {}
        #: job id -> the execution policy its request carried (None: none)
        self.policies: dict[str, dict[str, Any] | None] = {}
        self.progress: dict[str, list[dict[str, Any]]] = {}
        #: job id -> every stream item the worker sent, with time.monotonic() when it came
        self.streamed: dict[str, list[tuple[float, Any]]] = {}
        self._stream_read: dict[str, int] = {}
        self.pings: list[dict[str, str]] = []
        self.job_takes = 0
        self._to_stop: list[str] = []
        #: job id -> time.monotonic() when the stop channel handed the stop to the worker
        self.stop_delivered_at: dict[str, float] = {}
        server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self.api_url = f"{self.url}/v2/{ENDPOINT_ID}"
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def worker_env(self) -> dict[str, str]:
        """The variables RunPod gives a worker, pointing here."""
        return {
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/v2/job-take/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/v2/job-done/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{self.url}/v2/job-stream/$RUNPOD_POD_ID/$ID?gpu=cpu",
            "RUNPOD_WEBHOOK_PING": f"{self.url}/ping/$RUNPOD_POD_ID",
            "RUNPOD_POD_ID": WORKER_ID,
            "RUNPOD_AI_API_KEY": "fake-key-for-the-local-platform",
            # the SDK's automatic checks want the internet (and a GPU): not this test's subject
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
        }

    def submit(self, job_input: dict[str, Any], **extra: Any) -> str:
        job_id = f"job-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self.queue.append({"id": job_id, "input": job_input, **extra})
            self.status[job_id] = "IN_QUEUE"
            self._lock.notify_all()
        return job_id

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not (value := predicate()):
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self._lock.wait(0.05)
        return value

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the routes ---------------------------------------------------------------------------

    def _take_job(self) -> dict[str, Any] | None:
        with self._lock:
            self.job_takes += 1
            if not self.queue:
                self._lock.wait(POLL_HOLD_SECONDS)
            if not self.queue:
                return None
            job = self.queue.pop(0)
            self.status[job["id"]] = "IN_PROGRESS"
            self._lock.notify_all()
            return job

    def _stops(self) -> list[str]:
        with self._lock:
            if not self._to_stop:
                self._lock.wait(POLL_HOLD_SECONDS)
            job_ids, self._to_stop = self._to_stop, []
            for job_id in job_ids:
                self.stop_delivered_at[job_id] = time.monotonic()
            self._lock.notify_all()
            return job_ids

    def _job_done(self, job_id: str, body: dict[str, Any]) -> None:
        with self._lock:
            if body.get("status") == "IN_PROGRESS":
                self.progress.setdefault(job_id, []).append(body.get("output"))
            elif self.status.get(job_id) != "CANCELLED":
                self.results[job_id] = body
                self.status[job_id] = "FAILED" if body.get("error") else "COMPLETED"
            self._lock.notify_all()

    def _job_stream(self, job_id: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.streamed.setdefault(job_id, []).append((time.monotonic(), body.get("output")))
            self._lock.notify_all()

    def _stream_of(self, job_id: str) -> dict[str, Any]:
        """RunPod's /stream/<id>: the job's status and the items not handed out before."""
        with self._lock:
            items = self.streamed.get(job_id, [])
            start = self._stream_read.get(job_id, 0)
            self._stream_read[job_id] = len(items)
            reply: dict[str, Any] = {"id": job_id, "status": self.status.get(job_id, "NOT_FOUND"),
                                     "stream": [{"output": output} for _, output in items[start:]]}
            if "error" in self.results.get(job_id, {}):
                reply["error"] = self.results[job_id]["error"]
            return reply

    def _cancel(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            if job_id in self.status and self.status[job_id] in ("IN_QUEUE", "IN_PROGRESS"):
                if self.status[job_id] == "IN_PROGRESS":
                    self._to_stop.append(job_id)
                self.queue = [job for job in self.queue if job["id"] != job_id]
                self.status[job_id] = "CANCELLED"
            self._lock.notify_all()
            return {"id": job_id, "status": self.status.get(job_id, "NOT_FOUND")}

    def _status_of(self, job_id: str) -> dict[str, Any]:
        """/status: the job's state and, once it ended, its output or error, as RunPod keeps them."""
        with self._lock:
            reply = {"id": job_id, "status": self.status.get(job_id, "NOT_FOUND")}
            result = self.results.get(job_id, {})
            reply.update({key: result[key] for key in ("output", "error") if key in result})
            return reply

    def _handler_class(self):
        platform = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path.startswith("/v2/job-take/"):
                    job = platform._take_job()
                    self._reply(*((200, job) if job else (204,)))
                elif path.startswith("/v2/job-stop/"):
                    job_ids = platform._stops()
                    self._reply(*((200, {"jobsToStop": job_ids}) if job_ids else (204,)))
                elif path.startswith("/ping/"):
                    query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                    with platform._lock:
                        platform.pings.append({key: values[0] for key, values in query.items()})
                        platform._lock.notify_all()
                    self._reply(200, {})
                elif path.startswith(f"/v2/{ENDPOINT_ID}/status/"):
                    self._reply(200, platform._status_of(path.rsplit("/", 1)[1]))
                elif path.startswith(f"/v2/{ENDPOINT_ID}/stream/"):
                    self._reply(200, platform._stream_of(path.rsplit("/", 1)[1]))
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if path.startswith("/v2/job-done/"):
                    platform._job_done(path.rsplit("/", 1)[1], json.loads(body))
                    self._reply(200, {})
                elif path.startswith("/v2/job-stream/"):
                    platform._job_stream(path.rsplit("/", 1)[1], json.loads(body))
                    self._reply(200, {})
                elif path == f"/v2/{ENDPOINT_ID}/run":
                    request = json.loads(body)
                    job_id = platform.submit(request["input"])
                    platform.policies[job_id] = request.get("policy")
                    self._reply(200, {"id": job_id, "status": "IN_QUEUE"})
                elif path == f"/v2/{ENDPOINT_ID}/runsync":
                    # RunPod holds /runsync for a while and answers with the status so far: a
                    # short hold here, so that clients meet both outcomes (done, or poll on)
                    request = json.loads(body)
                    job_id = platform.submit(request["input"])
                    platform.policies[job_id] = request.get("policy")
                    with contextlib.suppress(AssertionError):
                        platform.wait_for(lambda: job_id in platform.results, RUNSYNC_HOLD_SECONDS, "runsync")
                    self._reply(200, platform._status_of(job_id))
                elif path.startswith(f"/v2/{ENDPOINT_ID}/cancel/"):
                    self._reply(200, platform._cancel(path.rsplit("/", 1)[1]))
                else:
                    self._reply(404, {"error": "not found"})

            def _reply(self, status: int, payload: Any = None) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if payload is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        return Handler


class QueueWorker:
    """`python -m handler` as RunPod starts it: the SDK's job loop, taking jobs from the platform."""

    def __init__(self, platform: RunPodPlatform, env: dict[str, str], workdir: Path,
                 extra_pythonpath: tuple[Path, ...] = ()) -> None:
        self.tmpdir = workdir / "tmp"
        self.tmpdir.mkdir(parents=True)
        self.log_path = workdir / "worker.log"
        full_env = {
            key: value for key, value in os.environ.items() if not key.startswith(("BUCKET_", "RUNPOD_", "HF_"))
        }
        full_env.update(platform.worker_env())
        full_env.update(env)
        full_env.update(TMPDIR=str(self.tmpdir), HOME=str(workdir),
                        PYTHONPATH=os.pathsep.join(str(path) for path in (ROOT, *extra_pythonpath)))
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen([sys.executable, "-m", "handler"], cwd=workdir, env=full_env,
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> float:
        """Poll the log until `text` appears; returns time.monotonic() when it was seen."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the worker's log after {timeout} s:\n{self.log()[-3000:]}")
            if self.process.poll() is not None:
                raise AssertionError(f"the worker exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.02)
        return time.monotonic()

    def leftovers(self) -> list[Path]:
        return list(self.tmpdir.rglob("*"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
