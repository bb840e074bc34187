"""`python -m handler.http_server --host H --port P`: the worker as an always-on HTTP server.

For a GPU box that runs all day, as the Thunder-era deployment did, or beside a RunPod endpoint
while clients move over (MIGRATION.md). The jobs are the RunPod worker's own (handler/job.py),
with its environment variables, limits and error codes; the model is loaded once, at start.

    POST /generate       the old box's multipart form (audio_file and image_file as files, and a
                         dubbing or two-speaker backend's video_file and audio_file_2; prompt and
                         the contract's other fields as form fields) or the contract's JSON body;
                         answers once the video is made:
                         200 {"success": true, "request_id", "download_url", "download_expires_at",
                              ...the contract's result fields}
                         or {"success": false, "request_id", "error": "CODE: sentence"} with the
                         code's HTTP status (STATUS_BY_CODE); 429 with Retry-After when the queue is
                         full (SERVER_QUEUE_SIZE jobs waiting behind the running one)
    GET /download/<id>   the MP4 (Range requests, so a browser can seek) until
                         SERVER_DOWNLOAD_RETENTION_SECONDS after it was made; then 404
    GET /health          {"status": "ok", "backend", "gpu", "busy", "queued", "queue_size", "receiving", ...}
                         (receiving: request bodies arriving now);
                         503 when the model could not load or a job broke the GPU
    GET /ping            as RunPod's load-balancing endpoints read it: 204 while the model loads,
                         200 once the server takes jobs, 503 when it never will
    POST /sessions       a live session over WebRTC: {"sdp": <offer>, "type": "offer", image_file |
                         image_url | avatar_id, resolution?} answers {"sdp": <answer>, "type": "answer",
                         "session_id"} (handler/webrtc_door.py); the contract's JSON error before any
                         media work for a bad offer, a backend that cannot go live (501), a full worker
                         (429 with Retry-After), bad portrait fields, no face
    DELETE /sessions/<id>  ends that session (404 if there is none)
    GET /live            the page where a person picks a portrait, speaks, and watches the avatar say it

With SERVER_API_KEY set, /generate, /download and /sessions answer 401 unless the request carries
`Authorization: Bearer <key>` (one of the comma-separated keys, compared in constant time);
/health and /ping stay open for probes. Without a key the server listens only on loopback,
unless started with --no-api-key.

The server listens from the start; while the model loads, /health answers 503 with
{"status": "starting"} and /generate 503 with Retry-After (after the API key is checked).

Connections are bounded in time and number (_connection_guard): a request's headers must have
arrived HEADER_TIMEOUT_SECONDS after the connection opened or its previous answer ended, an idle
keep-alive connection is closed after KEEP_ALIVE_SECONDS, and past MAX_CONNECTIONS the oldest
connection still waiting for headers is closed, so idle sockets cannot crowd out /health. At most
SERVER_QUEUE_SIZE + 1 request bodies are received at once (every job the server can hold); the next
/generate gets 429 with Retry-After before its body is read. A body must keep arriving: one slower
than SERVER_MIN_BODY_BYTES_PER_SECOND on average, from http_input.BODY_RATE_GRACE_SECONDS after it
began, or still arriving after BODY_READ_SECONDS, is answered 408 and its connection closed.

Every answer that is not a success is the contract's JSON error, `{"success": false, "error":
"CODE: sentence"}`: also an unknown route (404) or method (405), a request uvicorn cannot parse
(400), a Range the video cannot serve (400, 416), a disk that fills while a form is spooled
(TOO_LARGE, 413, logged as a warning), uvicorn's concurrency limit (503) and any crash (500, its
traceback logged). A sentence repeats a client's path, method or names
escaped and cut (handler/client_text.py).

One job runs at a time (one server per GPU); a client that hangs up stops its job at the next
step, and so does SERVER_JOB_TIMEOUT_SECONDS and the server's own stop (SIGTERM, SIGINT). The
download ids grant access to the videos, like presigned URLs: they are never logged, and
uvicorn's access log, which would log them, is off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.flow_control import service_unavailable

from handler.cancel import STOP_WAIT_SECONDS, WorkerStop
from handler.client_text import shown
from handler.downloads import DownloadStore
from handler.errors import ErrorCode, JobError
from handler.http_input import RequestRefused, body_limit, read_job
from handler.job import Worker
from handler.job_queue import JobQueue, QueueFull, Ticket
from handler.live_session import LiveSessions, SessionLimitError
from handler.settings import WORKER_SETTINGS, SettingsError, split_api_keys
from handler.startup import start_worker
from model.declaration import InputSupport

log = logging.getLogger("handler.http_server")

# 4xx: the request's fault, the client can fix it; 5xx: the worker's.
STATUS_BY_CODE = {
    ErrorCode.INVALID_INPUT: 400,
    ErrorCode.UNSUPPORTED_MEDIA: 415,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.NO_FACE: 422,
    ErrorCode.FETCH_FAILED: 422,  # a URL the request named could not be fetched
    ErrorCode.OUTPUT_TOO_LARGE: 422,  # output_type "base64" asked for more than MAX_INLINE_RESULT_BYTES
    ErrorCode.UPLOAD_FAILED: 502,
    ErrorCode.OUT_OF_MEMORY: 503,
    ErrorCode.MODEL_UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.LIVE_UNSUPPORTED: 501,  # this worker's backend cannot render live: no request can fix that here
    ErrorCode.SESSION_LIMIT: 429,
}
# How often a waiting request checks whether its client is still there and its deadline.
WATCH_SECONDS = 0.5
# A request body that has not arrived by then is refused (a client that stalls holds a connection).
BODY_READ_SECONDS = 600.0
# What a request made while the model loads is told to wait before it tries again.
STARTING_RETRY_SECONDS = 10
# A request's headers arrive in one round trip: a client still sending them after this long (from
# the connection's start, or its previous answer's end) is closed.
HEADER_TIMEOUT_SECONDS = 10.0
# An idle keep-alive connection is closed after this long (uvicorn's timeout_keep_alive).
KEEP_ALIVE_SECONDS = 5
# Open connections, all clients together: past it the oldest one waiting for its headers is closed.
# One job runs at a time, so legitimate clients need few; each costs a file descriptor and memory.
MAX_CONNECTIONS = 200
# What a /generate refused because as many bodies as the server can hold jobs are arriving is told.
UPLOADS_RETRY_SECONDS = 5
# What the server answers, for a client that asked for something else.
ROUTES = ("POST /generate, GET /download/<id>, GET /health, GET /ping, POST /sessions, DELETE /sessions/<id> "
          "and GET /live")
# The page of GET /live (written beside the server).
LIVE_PAGE = Path(__file__).resolve().parent / "static" / "live.html"


def create_app(worker: Worker) -> FastAPI:
    settings = worker.settings
    backend_field_types = worker.backend.options_class.field_types() if worker.backend is not None else {}
    queue = JobQueue(worker, settings.server_queue_size)
    store = DownloadStore(settings.server_download_retention_seconds, settings.server_download_max_bytes)
    stop = WorkerStop()
    inputs = worker.backend.declaration.inputs if worker.backend is not None else InputSupport()
    max_body = body_limit(settings.max_input_bytes, inputs, settings.max_video_bytes)
    # bodies being received at once: more than the jobs the server can hold (running and waiting) would only wait
    max_uploads = settings.server_queue_size + 1
    uploads = [0]
    #: why the server should be restarted, once a job asked for a fresh worker (a broken GPU)
    broken: list[str] = []
    sessions = LiveSessions(worker, settings)
    app_doors = _LiveDoors(sessions, settings.live_ice_servers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Here uvicorn's own signal handlers are in place: a stop first stops the jobs, then does what they do.
        stop.install()
        sweeper = asyncio.create_task(_sweep(store))
        try:
            yield
        finally:
            sweeper.cancel()
            await sessions.close_all("the server is shutting down")
            await app_doors.close_all()
            queue.stop_all("the server is shutting down")
            await asyncio.to_thread(queue.close, STOP_WAIT_SECONDS)
            store.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    api_keys = settings.server_api_keys

    @app.post("/generate")
    async def generate(request: Request) -> JSONResponse:
        job_id = f"srv-{uuid.uuid4().hex[:16]}"
        if not _authorized(request, api_keys):
            return _unauthorized(job_id)
        started = time.monotonic()
        if uploads[0] >= max_uploads:
            log.info("job %s refused: %d request bodies are arriving already", job_id, uploads[0])
            message = (f"the server is busy: {uploads[0]} request bodies are arriving already, as many as it can "
                       f"hold jobs (SERVER_QUEUE_SIZE={settings.server_queue_size} + the running one); "
                       f"retry in {UPLOADS_RETRY_SECONDS} s.")
            return _failure(job_id, JobError(ErrorCode.INTERNAL, message), status=429,
                            headers={"Retry-After": str(UPLOADS_RETRY_SECONDS), "Connection": "close"})
        uploads[0] += 1
        try:
            job = await asyncio.wait_for(
                read_job(request, job_id, max_body, backend_field_types, settings.server_min_body_bytes_per_second),
                BODY_READ_SECONDS)
        except TimeoutError:
            message = (f"the request body did not arrive within {BODY_READ_SECONDS:g} s; send large media as "
                       "audio_url and image_url.")
            return _failure(job_id, JobError(ErrorCode.INVALID_INPUT, message), status=408,
                            headers={"Connection": "close"})
        except JobError as error:
            status = error.status if isinstance(error, RequestRefused) else None
            if isinstance(error, RequestRefused) and error.server_fault:  # a full disk: the operator must know
                log.warning("job %s refused: %s", job_id, error)
            elif status == 408:
                log.info("job %s refused: %s", job_id, error)
            # a body refused unread (TOO_LARGE, too slow): closing is the only way not to receive the rest
            return _failure(job_id, error, status=status, headers={"Connection": "close"})
        finally:
            uploads[0] -= 1
        download_id = store.new_id()
        try:
            ticket = queue.submit(job, store.slot(download_id))
        except QueueFull as full:
            log.info("job %s refused: the queue is full (retry after %d s)", job_id, full.retry_after)
            return _failure(job_id, JobError(ErrorCode.INTERNAL, str(full)), status=429,
                            headers={"Retry-After": str(full.retry_after)})
        stop.watch(ticket.control)
        try:
            result = await _outcome(request, ticket, settings.server_job_timeout_seconds)
        finally:
            stop.unwatch(ticket.control)
        if "error" in result:
            store.discard(download_id)
            failure = _job_error(result["error"])
            if result.get("refresh_worker"):
                broken.append(f"job {job_id} left the GPU unusable ({failure.code.value}); restart the server.")
            log.info("job %s answered %s after %.2f s", job_id, failure.code.value, time.monotonic() - started)
            return _failure(job_id, failure)
        expires_at = store.publish(download_id)
        log.info("job %s answered 200 after %.2f s", job_id, time.monotonic() - started)
        download_url = _download_url(request, settings.server_public_url, download_id)
        return JSONResponse({"success": True, "request_id": job_id, "download_url": download_url,
                             "download_expires_at": expires_at, **result})

    @app.get("/download/{download_id}", name="download")
    async def download(download_id: str, request: Request):
        if not _authorized(request, api_keys):
            return _unauthorized(None)
        path = store.checkout(download_id)
        if path is None:
            message = (f"there is no video at this download_url: videos are kept {store.retention_seconds} s "
                       "(SERVER_DOWNLOAD_RETENTION_SECONDS) after they are made; generate it again.")
            body = {"success": False, "error": str(JobError(ErrorCode.INVALID_INPUT, message))}
            return JSONResponse(body, status_code=404)
        return _SentOnce(path, lambda: store.release(download_id))

    @app.post("/sessions")
    async def open_session(request: Request) -> JSONResponse:
        if not _authorized(request, api_keys):
            return _unauthorized(None)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            message = (f"Content-Type {shown(media_type) if media_type else 'none'} is not accepted; send "
                       'application/json: {"sdp": <offer>, "type": "offer", "image_file" (or image_url, avatar_id)}.')
            return _error_answer(JobError(ErrorCode.INVALID_INPUT, message), 415)
        try:
            # before the body is read: a refusal that no offer can change costs nothing
            sessions.check_can_open()
            job = await asyncio.wait_for(
                read_job(request, "session", max_body, {}, settings.server_min_body_bytes_per_second),
                BODY_READ_SECONDS)
            door = app_doors.webrtc()
            answer = await door.answer(job["input"])
        except TimeoutError:
            message = f"the request body did not arrive within {BODY_READ_SECONDS:g} s; send the portrait as image_url."
            return _error_answer(JobError(ErrorCode.INVALID_INPUT, message), 408, headers={"Connection": "close"})
        except SessionLimitError as full:
            log.info("a live session was refused: %s", full.code.value)
            return _error_answer(full, 429, headers={"Retry-After": str(full.retry_after)})
        except JobError as error:
            log.info("a live session was refused: %s", error.code.value)
            status = error.status if isinstance(error, RequestRefused) else STATUS_BY_CODE[error.code]
            return _error_answer(error, status)
        return _ErrorJSON(answer)

    @app.delete("/sessions/{session_id}")
    async def end_session(session_id: str, request: Request) -> Response:
        if not _authorized(request, api_keys):
            return _unauthorized(None)
        session = sessions.get(session_id)
        if session is None:
            message = "there is no live session with this id: it ended already, or never was; open a new one."
            return _error_answer(JobError(ErrorCode.INVALID_INPUT, message), 404)
        await session.end("the client ended it (DELETE /sessions)")
        return Response(status_code=204)

    @app.get("/live")
    async def live_page() -> Response:
        if not LIVE_PAGE.is_file():
            message = "this server has no live page (handler/static/live.html is missing); reinstall the worker."
            return _error_answer(JobError(ErrorCode.INTERNAL, message), 404)
        return FileResponse(LIVE_PAGE, media_type="text/html")

    @app.get("/ping")
    async def ping() -> Response:
        healthy = worker.startup_error is None and not broken
        return Response(status_code=200 if healthy else 503)

    @app.exception_handler(HTTPException)
    async def framework_refusal(request: Request, error: HTTPException) -> JSONResponse:
        return _framework_failure(request, error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _framework_failure(request, 400, "the request does not fit its route", None)

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception) -> JSONResponse:
        # Starlette logs nothing here and raises `error` again once this is sent; uvicorn logs its traceback
        return _crash_answer()

    @app.get("/health")
    async def health() -> JSONResponse:
        busy, queued = queue.state()
        body: dict[str, Any] = {"status": "ok", "busy": busy, "queued": queued, "queue_size": queue.max_waiting,
                                "receiving": uploads[0], "live_sessions": sessions.active,
                                "live_capacity": sessions.capacity}
        if worker.backend is not None:
            body.update(backend=worker.backend.name, gpu=worker.device, modes=list(worker.backend.modes),
                        default_mode=worker.default_mode)
        problem = str(worker.startup_error) if worker.startup_error is not None else (broken[0] if broken else None)
        if problem is None:
            return JSONResponse(body)
        return JSONResponse({**body, "status": "unavailable", "error": problem}, status_code=503)

    return app


class _LiveDoors:
    """The live sessions' doors the server opens: WebRTC's, made (and aiortc imported) at the first offer."""

    def __init__(self, sessions: LiveSessions, ice_servers: tuple[dict[str, Any], ...]) -> None:
        self._sessions = sessions
        #: LIVE_ICE_SERVERS, checked at start: {"urls", "username"?, "credential"?} each
        self._ice_servers = ice_servers
        self._webrtc: Any = None

    def webrtc(self) -> Any:
        if self._webrtc is None:
            try:
                from handler.webrtc_door import WebRTCDoor
            except ImportError:
                raise JobError(ErrorCode.LIVE_UNSUPPORTED, (
                    "this worker was installed without WebRTC support; install the `live` extra "
                    "(pip install 'talking-head-worker[live]') and restart it.")) from None
            self._webrtc = WebRTCDoor(self._sessions, self._ice_servers)
        return self._webrtc

    async def close_all(self) -> None:
        if self._webrtc is not None:
            await self._webrtc.close_all()


class _Starting:
    """The server while `start` loads the model: it listens already, so that a load balancer sees it
    initializing (RunPod's counts the cold start from the first 204 of /ping to the first 200), then
    hands every request to create_app's server."""

    def __init__(self, start: Callable[[], Worker], api_keys: tuple[str, ...]) -> None:
        self._start = start
        #: SERVER_API_KEY's keys, checked already while the model loads (create_app checks the worker's own)
        self._api_keys = api_keys
        self._app: FastAPI | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        started = False

        async def tracked_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if self._app is not None:
                await self._app(scope, receive, tracked_send)
            elif scope["type"] == "http":
                await self._starting_reply(Request(scope))(scope, receive, tracked_send)
        except Exception:
            # the app's crash handler has answered already; anything else gets the contract's answer here
            if not started and scope["type"] == "http":
                await _crash_answer()(scope, receive, send)
            raise

    def _starting_reply(self, request: Request) -> Response:
        path = request.url.path
        if path == "/ping":
            return Response(status_code=204)
        if path != "/health" and not _authorized(request, self._api_keys):
            return _unauthorized(None)
        message = f"the server is starting: the model is loading; retry in {STARTING_RETRY_SECONDS} s."
        if path == "/health":
            return JSONResponse({"status": "starting", "error": message}, status_code=503)
        body = {"success": False, "error": str(JobError(ErrorCode.MODEL_UNAVAILABLE, message))}
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(STARTING_RETRY_SECONDS)})

    async def _lifespan(self, receive, send) -> None:
        await receive()  # lifespan.startup
        loaded: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        # A daemon thread, not asyncio.to_thread: a stop during the load must not wait for the load to end.
        threading.Thread(target=_resolve, args=(loaded, self._start), name="load-model", daemon=True).start()
        await send({"type": "lifespan.startup.complete"})
        shutdown = asyncio.ensure_future(receive())
        await asyncio.wait({loaded, shutdown}, return_when=asyncio.FIRST_COMPLETED)
        if not shutdown.done():
            app = create_app(loaded.result())
            async with app.router.lifespan_context(app):
                self._app = app
                await shutdown
        await send({"type": "lifespan.shutdown.complete"})


def _resolve(future: asyncio.Future, function: Callable[[], Any]) -> None:
    """Run `function` here and hand its result to `future` on the future's own loop."""
    result = function()
    with contextlib.suppress(RuntimeError):  # the loop closed: the server stopped during the load
        future.get_loop().call_soon_threadsafe(future.set_result, result)


class _SentOnce(FileResponse):
    """The MP4, with Range requests (FileResponse's); `done` runs however the sending ends. A Range
    it cannot serve is the contract's JSON error (FileResponse's own answer is plain text)."""

    def __init__(self, path, done) -> None:
        super().__init__(path, media_type="video/mp4", content_disposition_type="inline")
        self._done = done

    async def __call__(self, scope, receive, send) -> None:
        try:
            # read once, here, for the Range check and for FileResponse
            self.stat_result = await asyncio.to_thread(os.stat, self.path)
            self.set_stat_headers(self.stat_result)
            refusal = self._range_refusal(Request(scope))
            await (refusal or super().__call__)(scope, receive, send)
        finally:
            self._done()

    def _range_refusal(self, request: Request) -> Response | None:
        """The answer to a Range header FileResponse would refuse, as FileResponse reads it; None: it serves."""
        asked = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if asked is None or request.method not in ("GET", "HEAD") or (
                if_range is not None and not self._should_use_range(if_range)):
            return None
        assert self.stat_result is not None
        size = self.stat_result.st_size
        try:
            self._parse_range_header(asked, size)
        except MalformedRangeHeader:
            message = f"the Range header {shown(asked)} cannot be read; ask for bytes, e.g. Range: bytes=0-1023."
            return _error_answer(JobError(ErrorCode.INVALID_INPUT, message), 400)
        except RangeNotSatisfiable:
            message = f"the Range header {shown(asked)} asks for bytes past the video's end (it has {size} bytes)."
            return _error_answer(JobError(ErrorCode.INVALID_INPUT, message), 416,
                                 headers={"Content-Range": f"bytes */{size}"})
        return None


async def _outcome(request: Request, ticket: Ticket, timeout_seconds: float) -> dict[str, Any]:
    """Wait for the job; stop it when its client hangs up or it runs past its deadline."""
    while True:
        done, _ = await asyncio.wait({ticket.future}, timeout=WATCH_SECONDS)
        if done:
            if ticket.future.cancelled():  # the server stopped before the job's turn came
                message = "the job was stopped before it started: the server is shutting down. Submit it again."
                return {"error": str(JobError(ErrorCode.INTERNAL, message))}
            return ticket.future.result()
        control = ticket.control
        if control.requested_at is not None:
            if time.monotonic() - control.requested_at > STOP_WAIT_SECONDS:
                log.warning("job %s is still running %.0f s after it was stopped", ticket.job_id, STOP_WAIT_SECONDS)
                message = f"the job was stopped ({control.reason}) but had not ended after {STOP_WAIT_SECONDS:g} s."
                return {"error": str(JobError(ErrorCode.INTERNAL, message))}
        elif await request.is_disconnected():
            control.stop("the client closed the connection")
        elif ticket.started_at is not None and time.monotonic() - ticket.started_at > timeout_seconds:
            control.stop(f"it ran longer than SERVER_JOB_TIMEOUT_SECONDS={timeout_seconds:g} s")


async def _sweep(store: DownloadStore) -> None:
    period = min(30.0, max(0.5, store.retention_seconds / 4))
    while True:
        await asyncio.sleep(period)
        store.sweep()


class _ErrorJSON(JSONResponse):
    """The contract's error, in JSON that any character of a sentence can be written in: escaped to ASCII."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _failure(
    job_id: str, error: JobError, status: int | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"success": False, "request_id": job_id, "error": str(error)}
    return _ErrorJSON(body, status_code=status or STATUS_BY_CODE[error.code], headers=headers)


def _error_answer(error: JobError, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The contract's error for a request that is no job (it has no request_id)."""
    return _ErrorJSON({"success": False, "error": str(error)}, status_code=status, headers=headers)


def _crash_answer() -> JSONResponse:
    message = "the server failed while answering this request (its log has the details); try again."
    return _error_answer(JobError(ErrorCode.INTERNAL, message), 500, headers={"Connection": "close"})


def _framework_failure(request: Request, status: int, detail: str, headers: dict[str, str] | None) -> JSONResponse:
    """Starlette's refusal of a request (no such route, a method the route does not take) as the
    contract's error, with its status and headers (a 405's Allow)."""
    # the path as it came (request.url's parsing drops a newline from it)
    method, path = shown(request.method), shown(request.scope.get("path", ""))
    if status == 404:
        message = f"there is nothing at {path} on this server: it answers {ROUTES}."
    elif status == 405:
        allowed = (headers or {}).get("Allow", "")
        message = f"{path} does not take {method}: it takes {allowed or 'other methods'}; this server answers {ROUTES}."
    else:
        message = f"the request could not be answered ({shown(detail)})."
    code = ErrorCode.TOO_LARGE if status == 413 else ErrorCode.INTERNAL if status >= 500 else ErrorCode.INVALID_INPUT
    return _error_answer(JobError(code, message), status, headers=headers)


def _download_url(request: Request, public_url: str | None, download_id: str) -> str:
    """SERVER_PUBLIC_URL's, else the address the connection reached: never the client's Host header."""
    path = request.app.url_path_for("download", download_id=download_id)
    if public_url:
        return public_url.rstrip("/") + path
    host, port = request.scope["server"]
    host = f"[{host}]" if ":" in host else host
    return f"{request.url.scheme}://{host}:{port}{path}"


def _authorized(request: Request, api_keys: tuple[str, ...]) -> bool:
    """No keys: open. Else the request's bearer token is one of them (each compared in constant time)."""
    if not api_keys:
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = token.strip().encode()
    # every key compared, so that the time taken says nothing about which one came close
    matches = [hmac.compare_digest(given, key.encode()) for key in api_keys]
    return scheme.lower() == "bearer" and any(matches)


def _unauthorized(job_id: str | None) -> JSONResponse:
    message = ("this server requires an API key (SERVER_API_KEY): send the header "
               "Authorization: Bearer <key> with one of its keys.")
    body: dict[str, Any] = {"success": False, "error": str(JobError(ErrorCode.INVALID_INPUT, message))}
    if job_id is not None:
        body = {"success": False, "request_id": job_id, "error": body["error"]}
    return _ErrorJSON(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})


# uvicorn's answer to a request it cannot parse is plain text; the guard's is the contract's.
_UNPARSABLE_BODY = json.dumps({"success": False, "error": str(JobError(
    ErrorCode.INVALID_INPUT, "the request is not valid HTTP/1.1 (its request line, a header or its body's "
                             "framing); send it as an HTTP client does."))}).encode("ascii")
UNPARSABLE_ANSWER = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_UNPARSABLE_BODY), _UNPARSABLE_BODY))


async def _over_capacity(scope, receive, send) -> None:
    """The answer past uvicorn's limit_concurrency (requests in progress, all clients together)."""
    message = (f"the server is answering as many requests as it takes at once; retry in "
               f"{UPLOADS_RETRY_SECONDS} s.")
    headers = {"Retry-After": str(UPLOADS_RETRY_SECONDS), "Connection": "close"}
    await _error_answer(JobError(ErrorCode.INTERNAL, message), 503, headers=headers)(scope, receive, send)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _configured_api_keys() -> tuple[str, ...]:
    """SERVER_API_KEY as the settings read it; none when it cannot be read (the start reports that)."""
    setting = next(setting for setting in WORKER_SETTINGS if setting.env == "SERVER_API_KEY")
    try:
        return split_api_keys(setting.read(os.environ))
    except (SettingsError, ValueError):
        return ()


def _connection_guard(base: Any, header_seconds: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol `base`, with the deadline for a request's headers and the bound on
    connections that uvicorn lacks (it times only idle keep-alive connections, and only after an answer).

    A connection waits for headers from the moment it opens, and again once an answer ended with no
    request pending; both uvicorn protocols (h11, httptools) set `cycle` when a request's headers
    are complete, which ends the wait. Past `max_connections` the connection that has waited
    longest is closed: that is an idle or a slow client's, never a request in progress.
    """
    # every connection waiting for headers, oldest first, with its deadline's timer
    waiting: dict[Any, asyncio.TimerHandle] = {}

    class GuardedProtocol(base):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_headers()
            if len(self.connections) > max_connections:
                next(iter(waiting))._drop()

        def connection_lost(self, exc) -> None:
            self._headers_arrived()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            # what both uvicorn protocols call for a request they cannot parse: the contract's answer instead
            if not self.transport.is_closing():
                self.transport.write(UNPARSABLE_ANSWER)
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # none pending (a pipelined request's headers arrived already): wait for the next one
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._await_headers()

        @property
        def cycle(self):
            return self.__dict__.get("guarded_cycle")

        @cycle.setter
        def cycle(self, value) -> None:
            self.__dict__["guarded_cycle"] = value
            if value is not None:
                self._headers_arrived()
                # past limit_concurrency uvicorn runs its plain-text 503 in the request's place: the
                # contract's instead (both protocols start a request as cycle.run_asgi(app))
                run_asgi = value.run_asgi
                value.run_asgi = lambda app: run_asgi(_over_capacity if app is service_unavailable else app)

        def _await_headers(self) -> None:
            self._headers_arrived()
            waiting[self] = self.loop.call_later(header_seconds, self._drop)

        def _headers_arrived(self) -> None:
            timer = waiting.pop(self, None)
            if timer is not None:
                timer.cancel()

        def _drop(self) -> None:
            self._headers_arrived()
            # out of the count at once (its connection_lost comes later), as uvicorn does for a WebSocket
            self.connections.discard(self)
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedProtocol


def _job_error(text: str) -> JobError:
    """The job's `"CODE: sentence"` as a JobError again."""
    code, _, message = text.partition(": ")
    return JobError(ErrorCode(code), message)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m handler.http_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-api-key", action="store_true",
                        help="listen beyond loopback without SERVER_API_KEY: anyone who reaches the port renders")
    args = parser.parse_args(argv)
    if not _is_loopback(args.host) and not args.no_api_key and not _configured_api_keys():
        parser.error(f"--host {args.host} listens beyond this machine, and SERVER_API_KEY is not set: anyone who "
                     "reaches the port could render and fill the bucket. Set SERVER_API_KEY (clients send "
                     "Authorization: Bearer <key>), or pass --no-api-key to run it open on purpose.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # A stopped job ends at its next step; past this a stuck step no longer holds the stop.
    # log_level: the RunPod SDK, imported with the worker, quiets the "uvicorn" loggers to WARNING.
    # limit_concurrency bounds the requests in flight too (uvicorn answers 503 past it); the guard keeps
    # the connections under it, so that idle ones never reach it.
    uvicorn.run(_Starting(start_worker, _configured_api_keys()), host=args.host, port=args.port, access_log=False,
                log_config=None, log_level="info", timeout_graceful_shutdown=int(STOP_WAIT_SECONDS),
                http=_connection_guard(AutoHTTPProtocol, HEADER_TIMEOUT_SECONDS, MAX_CONNECTIONS),
                timeout_keep_alive=KEEP_ALIVE_SECONDS, limit_concurrency=MAX_CONNECTIONS + 1)


if __name__ == "__main__":
    main()
