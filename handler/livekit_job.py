"""A live session in a LiveKit room, as a job: the avatar of a LiveKit voice agent (docs/LIVEKIT.md).

The job's input is `{"live": {"livekit_url", "livekit_token", <portrait fields>, ...}}`. Everything a
job can get wrong is refused before the room is joined or a portrait decoded: the URL's shape and
host (the job URLs' private-address guard, handler/fetch.py), the token's claims (read without
verifying: the worker does not hold the server's secret, the server checks the signature when we
join). Then the worker joins the room within CONNECT_SECONDS, opens the session
(handler/live_session.py) and holds it (handler/livekit_door.py) until the room ends, the agent
leaves, a limit, a stop (RunPod's cancel, SIGTERM) or the session's own end; the result says which,
and for how long it ran.

The same job runs on RunPod (handler/runpod_handler.py routes it) and as a process beside an agent:
`python -m handler.livekit_job` reads the input as JSON on stdin (so no token shows in `ps`) and
prints the result.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import math
import signal
import sys
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol

from handler.client_text import shown_value
from handler.errors import ErrorCode, JobError
from handler.fetch import resolve_public

log = logging.getLogger(__name__)

#: the input object of a live job: `{"live": {...}}`
LIVE_FIELD = "live"
URL_FIELD = "livekit_url"
TOKEN_FIELD = "livekit_token"
AGENT_FIELD = "agent_identity"
ROOM_FIELDS = frozenset({URL_FIELD, TOKEN_FIELD, AGENT_FIELD})
# LiveKit's access tokens are a few hundred bytes; this only bounds what a job makes us decode.
MAX_TOKEN_CHARS = 16_384
# A token that expires within this long cannot be joined with reliably: refused as expired.
TOKEN_EXPIRY_MARGIN_SECONDS = 5.0
# The attribute LiveKit agents read to show an avatar's tracks as the agent's own
# (livekit.agents.types.ATTRIBUTE_PUBLISH_ON_BEHALF); named here so validation imports nothing.
PUBLISH_ON_BEHALF = "lk.publish_on_behalf"
# Joining the room: the name lookup, the signal connection and the first peer connection.
CONNECT_SECONDS = 20.0
# After joining, how long the avatar waits for the agent it serves to be in the room.
AGENT_JOIN_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class RoomTarget:
    """The room a live job joins, as its token names it. `token` is a secret: never logged, never repr'd."""

    url: str
    host: str
    port: int
    room: str
    identity: str
    #: whose speech the avatar shows (and whose leaving ends it); None: the first agent in the room
    agent_identity: str | None
    expires_at: float
    token: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class LiveJobRequest:
    target: RoomTarget
    #: the portrait and session fields, for the session engine (`LiveSessions.open`)
    session_fields: dict[str, Any]


def is_live_job(job_input: Any) -> bool:
    """Whether a job's input asks for a live session (its `live` field) rather than a render."""
    return isinstance(job_input, Mapping) and LIVE_FIELD in job_input


def parse_live_input(job_input: Mapping[str, Any], now: float) -> LiveJobRequest:
    """The live job's request; JobError INVALID_INPUT naming the field for any bad shape or claim."""
    extra = sorted(str(name) for name in job_input if name != LIVE_FIELD)
    if extra:
        raise JobError(ErrorCode.INVALID_INPUT, (
            f"{shown_value(extra[0])}: a live job's fields all go inside `{LIVE_FIELD}` "
            f'({{"{LIVE_FIELD}": {{"{URL_FIELD}": ..., "{TOKEN_FIELD}": ..., "image_url": ...}}}}); move it there.'))
    fields = job_input[LIVE_FIELD]
    if not isinstance(fields, Mapping):
        raise JobError(ErrorCode.INVALID_INPUT, (
            f"{LIVE_FIELD} must be an object with {URL_FIELD}, {TOKEN_FIELD} and the portrait "
            "(image_url, image_file or avatar_id)."))
    url, host, port = check_livekit_url(_text(fields, URL_FIELD))
    claims = read_token_claims(_text(fields, TOKEN_FIELD), now)
    agent = fields.get(AGENT_FIELD)
    if agent is not None and (not isinstance(agent, str) or not agent.strip()):
        raise JobError(ErrorCode.INVALID_INPUT, (
            f"{AGENT_FIELD} must be the agent participant's identity as text; leave it out to take the token's "
            f"{PUBLISH_ON_BEHALF} attribute or the first agent in the room."))
    target = RoomTarget(
        url=url, host=host, port=port, room=claims.room, identity=claims.identity,
        agent_identity=agent or claims.publish_on_behalf, expires_at=claims.expires_at, token=fields[TOKEN_FIELD],
    )
    session_fields = {name: value for name, value in fields.items() if name not in ROOM_FIELDS}
    return LiveJobRequest(target, session_fields)


def _text(fields: Mapping[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not value.strip():
        what = "your LiveKit server's ws:// or wss:// URL" if name == URL_FIELD else \
            "an access token for the avatar's participant (a JWT with roomJoin to the room)"
        raise JobError(ErrorCode.INVALID_INPUT, f"{LIVE_FIELD}.{name} is required: send {what}.")
    return value.strip()


def check_livekit_url(url: str) -> tuple[str, str, int]:
    """The URL, its host and port, once it is ws:// or wss:// with a host (the address guard comes later)."""
    try:
        parsed = urllib.parse.urlsplit(url)
        port = parsed.port
    except ValueError:
        raise JobError(ErrorCode.INVALID_INPUT, f"{URL_FIELD} is not a valid URL; send wss://<your LiveKit host>.") \
            from None
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise JobError(ErrorCode.INVALID_INPUT, (
            f"{URL_FIELD} must be a ws:// or wss:// URL with a host (e.g. wss://my-project.livekit.cloud), "
            f"not {shown_value(parsed.scheme + '://') if parsed.scheme else 'one without a scheme'}."))
    if parsed.username or parsed.password:
        raise JobError(ErrorCode.INVALID_INPUT, f"{URL_FIELD} must not carry credentials; the token authenticates.")
    return url, parsed.hostname, port or (443 if parsed.scheme == "wss" else 80)


@dataclasses.dataclass(frozen=True)
class TokenClaims:
    room: str
    identity: str
    expires_at: float
    publish_on_behalf: str | None


def read_token_claims(token: str, now: float) -> TokenClaims:
    """The claims a join needs, read from the JWT's payload without verifying its signature.

    Refused (INVALID_INPUT, naming livekit_token and never repeating it): not a JWT, no roomJoin
    grant to a named room, no identity, no expiry or an expired one, not valid yet.
    """
    field = TOKEN_FIELD
    if len(token) > MAX_TOKEN_CHARS:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} is longer than {MAX_TOKEN_CHARS} characters; "
                                                "send the access token your LiveKit server's API key made.")
    parts = token.split(".")
    if len(parts) != 3:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} is not a JWT (three dot-separated parts); send the "
                                                "access token made with livekit-api's AccessToken(...).to_jwt().")
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        raise JobError(ErrorCode.INVALID_INPUT, f"{field}: its payload is not base64url JSON; send an "
                                                "unmodified LiveKit access token.") from None
    if not isinstance(payload, dict):
        raise JobError(ErrorCode.INVALID_INPUT, f"{field}: its payload is not a JSON object; send an unmodified "
                                                "LiveKit access token.")
    video = payload.get("video")
    if not isinstance(video, dict) or video.get("roomJoin") is not True:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} does not grant roomJoin; mint it with "
                                                "VideoGrants(room_join=True, room=<the agent's room>).")
    room = video.get("room")
    if not isinstance(room, str) or not room:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} grants roomJoin to no named room; mint it with "
                                                "VideoGrants(room_join=True, room=<the agent's room>).")
    identity = payload.get("sub")
    if not isinstance(identity, str) or not identity:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} carries no identity (its `sub`); mint it with "
                                                ".with_identity(<the avatar's identity>).")
    expires = payload.get("exp")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} has no expiry (`exp`); mint it with a ttl.")
    if expires <= now + TOKEN_EXPIRY_MARGIN_SECONDS:
        raise JobError(ErrorCode.INVALID_INPUT, (
            f"{field} expired {max(0.0, now - expires):.0f} s ago (or expires within "
            f"{TOKEN_EXPIRY_MARGIN_SECONDS:g} s); mint a fresh one for each avatar."))
    not_before = payload.get("nbf")
    if isinstance(not_before, (int, float)) and not isinstance(not_before, bool) and not_before > now + 60:
        raise JobError(ErrorCode.INVALID_INPUT, f"{field} is not valid for another {not_before - now:.0f} s "
                                                "(its `nbf`); check the clock of the machine that minted it.")
    attributes = payload.get("attributes")
    on_behalf = attributes.get(PUBLISH_ON_BEHALF) if isinstance(attributes, dict) else None
    return TokenClaims(room, identity, float(expires), on_behalf if isinstance(on_behalf, str) and on_behalf else None)


def check_livekit_host(target: RoomTarget, allow_private: bool, deadline_seconds: float) -> None:
    """The job URLs' guard on the server's host: every address it resolves to must be public."""
    resolve_public(
        target.host, target.port, URL_FIELD, allow_private, ErrorCode.FETCH_FAILED,
        "which this worker does not connect to; use your LiveKit server's public URL.",
        deadline=time.monotonic() + deadline_seconds, deadline_name=f"connect deadline of {deadline_seconds:g} s",
    )


class SessionOpener(Protocol):
    """What a live job needs of the session engine: `WorkerSessions`, or a stand-in."""

    def check(self, fields: Mapping[str, Any]) -> None: ...

    async def open(self, fields: Mapping[str, Any]) -> Any: ...


class WorkerSessions:
    """The worker's session engine (handler/live_session.py) as a live job uses it: the session's
    fields judged before the room is joined, the session opened once it is."""

    def __init__(self, worker: Any, sessions: Any) -> None:
        self._worker = worker
        self._sessions = sessions

    def check(self, fields: Mapping[str, Any]) -> None:
        """LIVE_UNSUPPORTED, SESSION_LIMIT, then the portrait fields' own errors, before any media work."""
        self._sessions.check_can_open()
        self._worker.live_options(fields)

    async def open(self, fields: Mapping[str, Any]) -> Any:
        return await self._sessions.open(fields)


@dataclasses.dataclass(frozen=True)
class LiveJobLimits:
    allow_private_urls: bool
    max_session_seconds: float
    connect_seconds: float = CONNECT_SECONDS
    agent_join_seconds: float = AGENT_JOIN_SECONDS


async def run_live_job(
    job: Mapping[str, Any], sessions: SessionOpener, limits: LiveJobLimits, stop: asyncio.Event,
    model_name: str = "",
) -> dict[str, Any]:
    """Run one live job until it ends. Never raises a JobError: failures are `{"error": "CODE: sentence"}`.

    `stop` set (RunPod's cancel, SIGTERM) ends the session within a frame and leaves the room.
    """
    job_id = str(job.get("id") or "local")
    started = time.monotonic()
    try:
        request = parse_live_input(job.get("input") or {}, time.time())
        sessions.check(request.session_fields)
        await asyncio.to_thread(check_livekit_host, request.target, limits.allow_private_urls, limits.connect_seconds)
        door = _door()
        log.info("live job %s: joining room %s as %s", job_id, shown_value(request.target.room),
                 shown_value(request.target.identity))
        outcome = await door.hold_room_session(request, sessions, limits, stop)
    except JobError as error:
        log.info("live job %s failed: %s", job_id, error)
        return {"error": str(error)}
    except Exception:  # noqa: BLE001 - the worker must survive anything a session does
        log.exception("live job %s crashed", job_id)
        return {"error": str(JobError(ErrorCode.INTERNAL, (
            "the live session hit an unexpected error; it was logged with the job id. Retry, and report it if it "
            "persists.")))}
    held = round(time.monotonic() - started, 3)
    log.info("live job %s ended after %.1f s: %s", job_id, held, outcome.end_reason)
    return {
        "success": True,
        "request_id": job_id,
        "room": request.target.room,
        "identity": request.target.identity,
        "agent_identity": outcome.agent_identity,
        "session_id": outcome.session_id,
        "end_reason": outcome.end_reason,
        "duration_seconds": round(outcome.session_seconds, 3),
        "num_frames": outcome.num_frames,
        "utterances": outcome.utterances,
        "interruptions": outcome.interruptions,
        "fps": outcome.fps,
        "width": outcome.width,
        "height": outcome.height,
        "model": model_name,
        "generation_time_seconds": held,
    }


def _door() -> Any:
    """handler/livekit_door.py, which imports livekit-agents: the `livekit` extra."""
    try:
        from handler import livekit_door
    except ImportError as error:
        raise JobError(ErrorCode.LIVE_UNSUPPORTED, (
            f"this worker cannot join LiveKit rooms: {error.name or 'livekit-agents'} is not installed; install "
            "the `livekit` extra (pip install '.[livekit]') or use the image, which has it.")) from None
    return livekit_door


def main() -> int:
    """A live job beside an agent: its input as JSON on stdin, its result as JSON on stdout."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        job_input = json.loads(sys.stdin.read())
    except ValueError:
        print(json.dumps({"error": str(JobError(ErrorCode.INVALID_INPUT, "stdin must be the job's input as JSON: "
                                                '{"live": {"livekit_url": ..., ...}}.'))}))
        return 2
    from handler.live_session import LiveSessions
    from handler.startup import start_worker

    worker = start_worker()
    if worker.startup_error is not None:
        print(json.dumps({"error": str(worker.startup_error)}))
        return 1
    settings = worker.settings
    limits = LiveJobLimits(settings.allow_private_urls, settings.live_max_session_seconds)

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        sessions = LiveSessions(worker, settings)
        try:
            return await run_live_job({"id": "local", "input": job_input}, WorkerSessions(worker, sessions), limits,
                                      stop, worker.loaded_backend.name)
        finally:
            await sessions.close_all("the avatar process is ending")

    result = asyncio.run(run())
    print(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
