"""The LiveKit door (handler/livekit_door.py, handler/livekit_job.py) through livekit-agents' own classes.

No LiveKit server runs here, so everything is tested up to the room: the agent's
`DataStreamAudioOutput` and our avatar's `DataStreamAudioReceiver` + `AvatarRunner` talk through
`LoopbackRooms`, a stand-in for the server that carries byte streams and RPCs between two
in-process participants and keeps the tracks the avatar publishes, which the tests read back
with rtc.VideoStream / rtc.AudioStream (livekit's real media pipeline, in process). What the
server itself does (signalling, WebRTC, token signatures) is not run; joining a real room is
tested only up to the connection failing (an unreachable or silent server).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import http.server
import inspect
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile

pytest.importorskip("livekit.agents")

from livekit import api, rtc  # noqa: E402
from livekit.agents.voice.avatar import AudioSegmentEnd, DataStreamAudioOutput  # noqa: E402

from handler import livekit_door  # noqa: E402
from handler.live_session import LiveSession, LiveSessions  # noqa: E402
from handler.livekit_job import (  # noqa: E402
    PUBLISH_ON_BEHALF,
    LiveJobLimits,
    parse_live_input,
    read_token_claims,
    run_live_job,
)
from handler.startup import start_worker  # noqa: E402
from tests.conftest import ASSETS, ROOT, free_port  # noqa: E402

AGENT = "agent-7"
AVATAR = "talking-head-avatar"
ROOM = "support-call"
API_KEY, API_SECRET = "APItestkey", "test-secret-that-is-long-enough-for-hs256"
HANG_GUARD_SECONDS = 60  # only keeps a broken test from hanging the suite; nothing is timed against it
TTS_RATE = 24_000


def speech_at(rate: int, seconds: float) -> np.ndarray:
    """The first `seconds` of assets/speech.wav as int16 at `rate` (a TTS's rate)."""
    samples, source_rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    samples = samples[: int(seconds * source_rate)]
    positions = np.arange(int(len(samples) * rate / source_rate)) * source_rate / rate
    resampled = np.interp(positions, np.arange(len(samples)), samples)
    return np.round(np.clip(resampled, -1, 1) * 32767).astype(np.int16)


def pcm_frames(pcm: np.ndarray, rate: int, piece_ms: int = 20) -> Iterator[rtc.AudioFrame]:
    step = rate * piece_ms // 1000
    for start in range(0, len(pcm), step):
        piece = pcm[start:start + step]
        yield rtc.AudioFrame(piece.tobytes(), rate, 1, len(piece))


def mint_token(identity: str = AVATAR, room: str | None = ROOM, ttl_seconds: float = 600, **claims: Any) -> str:
    token = api.AccessToken(API_KEY, API_SECRET).with_identity(identity).with_kind("agent")
    token = token.with_attributes({PUBLISH_ON_BEHALF: AGENT})
    token = token.with_ttl(datetime.timedelta(seconds=ttl_seconds))
    if room is not None:
        token = token.with_grants(api.VideoGrants(room_join=True, room=room))
    jwt = token.to_jwt()
    if not claims:
        return jwt
    header, payload, signature = jwt.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    decoded.update(claims)
    decoded = {key: value for key, value in decoded.items() if value is not None}
    encoded = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


@pytest.fixture(scope="module")
def lite_worker():
    return start_worker({"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1", "LIVE_MAX_SESSIONS": "8"})


PORTRAIT = base64.b64encode((ASSETS / "portrait.jpg").read_bytes()).decode()


async def open_session(worker) -> LiveSession:
    """A session of the real engine on lite's own live generator, small frames to keep the tests cheap."""
    return await LiveSessions(worker, worker.settings).open({"image_file": PORTRAIT, "resolution": "192*192"})


def run(coroutine) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, HANG_GUARD_SECONDS))


# --- the room, without a server ---------------------------------------------------------------------------------


class LoopbackRooms:
    """Participants in one room, in process: what the code under test uses of rtc.Room, carried directly."""

    def __init__(self) -> None:
        self.rooms: dict[str, FakeRoom] = {}

    def join(self, identity: str, attributes: dict[str, str] | None = None) -> FakeRoom:
        room = FakeRoom(self, identity, attributes or {})
        for other in self.rooms.values():
            other.arrive(room.local_participant)
            room.arrive(other.local_participant)
        self.rooms[identity] = room
        return room

    def leave(self, identity: str) -> None:
        room = self.rooms.pop(identity)
        for other in self.rooms.values():
            other.depart(room.local_participant)


class FakeParticipant:
    def __init__(self, room: FakeRoom, identity: str, attributes: dict[str, str]) -> None:
        self.identity, self.attributes, self.sid = identity, attributes, f"PA_{identity}"
        self.kind = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        self.state = rtc.ParticipantState.PARTICIPANT_STATE_ACTIVE
        self._room = room
        self._rpc_handlers: dict[str, Any] = {}
        self.published: list[Any] = []
        self.track_publications: dict[str, Any] = {}
        self.track_published = asyncio.Event()

    def register_rpc_method(self, method: str, handler: Any) -> None:
        self._rpc_handlers[method] = handler

    async def perform_rpc(self, *, destination_identity: str, method: str, payload: str, **_: Any) -> str:
        peer = self._room.hub.rooms.get(destination_identity)
        handler = peer.local_participant._rpc_handlers.get(method) if peer else None
        if handler is None:
            raise rtc.RpcError(rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, f"no {method} on {destination_identity}")
        data = rtc.RpcInvocationData(uuid.uuid4().hex, self.identity, payload, 5.0, method)
        answer = handler(data)
        return await answer if inspect.isawaitable(answer) else answer

    async def stream_bytes(self, name: str, *, topic: str = "", destination_identities: list[str] | None = None,
                           attributes: dict[str, str] | None = None, **_: Any) -> FakeByteWriter:
        reader = FakeByteReader(topic, attributes or {})
        for identity in destination_identities or []:
            self._room.hub.rooms[identity].deliver(reader, self.identity)
        return FakeByteWriter(reader)

    async def publish_track(self, track: Any, options: Any = None) -> Any:
        publication = FakePublication(track)
        self.published.append(track)
        self.track_publications[publication.sid] = publication
        self.track_published.set()
        self._room.emit("local_track_published", publication, track)
        for identity, other in self._room.hub.rooms.items():
            if identity != self.identity:
                other.emit("track_published", publication, other.remote_participants[self.identity])
        return publication


class FakePublication:
    def __init__(self, track: Any) -> None:
        self.track, self.kind, self.sid = track, track.kind, f"TR_{uuid.uuid4().hex[:8]}"
        self.subscribed = True

    async def wait_for_subscription(self) -> None:
        return None


class FakeByteReader:
    def __init__(self, topic: str, attributes: dict[str, str]) -> None:
        self.info = type("Info", (), {"attributes": attributes, "stream_id": uuid.uuid4().hex, "topic": topic})()
        self._chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

    def __aiter__(self) -> FakeByteReader:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.get()
        if chunk is None:
            raise StopAsyncIteration
        return chunk


class FakeByteWriter:
    def __init__(self, reader: FakeByteReader) -> None:
        self._reader = reader

    async def write(self, data: bytes) -> None:
        self._reader._chunks.put_nowait(bytes(data))

    async def aclose(self) -> None:
        self._reader._chunks.put_nowait(None)


class FakeRoom(rtc.EventEmitter):
    def __init__(self, hub: LoopbackRooms, identity: str, attributes: dict[str, str]) -> None:
        super().__init__()
        self.hub, self.name = hub, ROOM
        self.local_participant = FakeParticipant(self, identity, attributes)
        self.remote_participants: dict[str, FakeParticipant] = {}
        self._stream_handlers: dict[str, Any] = {}
        self._connected = True

    def isconnected(self) -> bool:
        return self._connected

    def register_byte_stream_handler(self, topic: str, handler: Any) -> None:
        self._stream_handlers[topic] = handler

    def deliver(self, reader: FakeByteReader, sender: str) -> None:
        handler = self._stream_handlers.get(reader.info.topic)
        if handler is not None:
            handler(reader, sender)

    def arrive(self, participant: FakeParticipant) -> None:
        self.remote_participants[participant.identity] = participant
        self.emit("participant_connected", participant)
        self.emit("participant_active", participant)

    def depart(self, participant: FakeParticipant) -> None:
        self.remote_participants.pop(participant.identity, None)
        self.emit("participant_disconnected", participant)

    def drop(self) -> None:
        """The server ends the room (or removes this participant)."""
        self._connected = False
        self.emit("connection_state_changed", rtc.ConnectionState.CONN_DISCONNECTED)
        self.emit("disconnected", rtc.DisconnectReason.ROOM_DELETED)

    async def disconnect(self) -> None:
        self._connected = False


def limits(**overrides: Any) -> LiveJobLimits:
    return LiveJobLimits(**{"allow_private_urls": True, "max_session_seconds": 120.0, "connect_seconds": 2.0,
                            "agent_join_seconds": 10.0, **overrides})


# --- the VideoGenerator, driven the way AvatarRunner drives it --------------------------------------------------


def test_speech_in_becomes_video_frames_with_the_speech_and_an_utterance_end(lite_worker):
    """Agent audio pushed into SessionVideoGenerator comes out as RGBA VideoFrames at the session's
    size, each speech frame followed by its 48 kHz AudioFrame carrying that speech, and one
    AudioSegmentEnd once the whole utterance has been shown."""
    speech = speech_at(TTS_RATE, 1.2)

    async def scenario() -> tuple[list[Any], LiveSession]:
        session = await open_session(lite_worker)
        generator = livekit_door.SessionVideoGenerator(session)
        for frame in pcm_frames(speech, TTS_RATE):
            await generator.push_audio(frame)
        await generator.push_audio(AudioSegmentEnd())
        items: list[Any] = []
        async for item in generator:
            items.append(item)
            if sum(isinstance(i, rtc.VideoFrame) for i in items) >= 60:  # 2.4 s: the utterance and some idle
                break
        await session.end("test over")
        return items, session

    items, session = run(scenario())
    videos = [item for item in items if isinstance(item, rtc.VideoFrame)]
    audios = [item for item in items if isinstance(item, rtc.AudioFrame)]
    ends = [index for index, item in enumerate(items) if isinstance(item, AudioSegmentEnd)]
    assert {(frame.width, frame.height, frame.type) for frame in videos} == {
        (session.width, session.height, rtc.VideoBufferType.RGBA)}
    assert all(frame.sample_rate == 48_000 and frame.num_channels == 1 for frame in audios)
    assert {frame.samples_per_channel for frame in audios} == {round(48_000 / session.fps)}
    # the speech comes back whole: as many frames as it lasts (within one), and the same sound
    assert abs(len(audios) - 1.2 * session.fps) <= 1.5
    out = np.concatenate([np.frombuffer(frame.data, np.int16) for frame in audios]).astype(np.float64)
    reference = speech_at(48_000, 1.2).astype(np.float64)
    lag = int(np.argmax(np.correlate(out[:4800], reference[:2400], mode="valid")))
    overlap = min(len(out) - lag, len(reference))
    assert np.corrcoef(out[lag:lag + overlap], reference[:overlap])[0, 1] > 0.95
    # one utterance end, after the last of its speech and before the idle frames that follow
    assert len(ends) == 1
    last_audio = max(index for index, item in enumerate(items) if isinstance(item, rtc.AudioFrame))
    assert ends[0] > last_audio
    assert sum(isinstance(item, rtc.VideoFrame) for item in items[ends[0]:]) > 10


def test_clear_buffer_drops_the_queued_speech_at_the_next_frame(lite_worker):
    speech = speech_at(TTS_RATE, 3.0)

    async def scenario() -> tuple[int, list[Any], float]:
        session = await open_session(lite_worker)
        generator = livekit_door.SessionVideoGenerator(session)
        for frame in pcm_frames(speech, TTS_RATE):
            await generator.push_audio(frame)
        await generator.push_audio(AudioSegmentEnd())
        stream = aiter(generator)
        before = 0
        while before < 10:
            if isinstance(await anext(stream), rtc.AudioFrame):
                before += 1
        await generator.clear_buffer()
        queued_after_clear = session.queued_seconds
        after = [await anext(stream) for _ in range(40)]
        await session.end("test over")
        return before, after, queued_after_clear

    before, after, queued_after_clear = run(scenario())
    assert queued_after_clear == 0
    # the first frame after the clear already carries no speech, and none follows; no utterance end is
    # reported for the cleared one (AvatarRunner reports it as interrupted itself)
    assert isinstance(after[0], rtc.VideoFrame)
    assert not any(isinstance(item, (rtc.AudioFrame, AudioSegmentEnd)) for item in after)


def test_utterance_tracker_holds_each_end_until_its_speech_was_shown():
    tracker = livekit_door.UtteranceTracker(0.04)
    tracker.received(0.12)
    tracker.input_ended()
    tracker.received(0.08)  # the next utterance arrives before the first is shown
    tracker.input_ended()
    shown = [tracker.shown(0.04, nothing_queued=False) for _ in range(5)]
    assert shown == [False, False, True, False, True]
    tracker.input_ended()  # an end with no speech since (a cleared utterance's tail) is no utterance
    assert not any(tracker.shown(0.0, nothing_queued=True) for _ in range(30))


# --- the whole avatar in a room: DataStreamAudioOutput -> DataStreamAudioReceiver -> AvatarRunner --------------


class AvatarInRoom:
    """Our avatar serving `session` in a loopback room beside an agent that talks through DataStreamAudioOutput."""

    def __init__(self, session: LiveSession, **limit_overrides: Any) -> None:
        self.hub = LoopbackRooms()
        self.agent_room = self.hub.join(AGENT)
        self.avatar_room = self.hub.join(AVATAR, {PUBLISH_ON_BEHALF: AGENT})
        self.session = session
        self.stop = asyncio.Event()
        self.serving = asyncio.ensure_future(livekit_door.serve_session(
            self.avatar_room, session, AGENT, limits(**limit_overrides), self.stop))
        self.output = DataStreamAudioOutput(self.agent_room, destination_identity=AVATAR, wait_playback_start=True,
                                            wait_remote_track=rtc.TrackKind.KIND_VIDEO)
        self.finished: list[Any] = []
        self.started: list[Any] = []
        self.output.on("playback_finished", self.finished.append)
        self.output.on("playback_started", self.started.append)

    async def say(self, pcm: np.ndarray, rate: int) -> None:
        for frame in pcm_frames(pcm, rate):
            await self.output.capture_frame(frame)
        self.output.flush()

    async def published(self) -> tuple[Any, Any]:
        participant = self.avatar_room.local_participant
        await participant.track_published.wait()
        while len(participant.published) < 2:
            await asyncio.sleep(0.01)
        audio = next(t for t in participant.published if isinstance(t, rtc.LocalAudioTrack))
        video = next(t for t in participant.published if isinstance(t, rtc.LocalVideoTrack))
        return audio, video


def test_the_agents_speech_plays_in_the_room_and_playback_finished_reports_its_length(lite_worker):
    seconds = 1.5
    speech = speech_at(TTS_RATE, seconds)

    async def scenario() -> tuple[Any, list[Any], list[np.ndarray], AvatarInRoom, Any]:
        avatar = AvatarInRoom(await open_session(lite_worker))
        await avatar.say(speech, TTS_RATE)
        audio_track, video_track = await avatar.published()
        video_stream = rtc.VideoStream(video_track)
        audio_stream = rtc.AudioStream(audio_track, sample_rate=48_000, num_channels=1)
        frames: list[Any] = []
        heard: list[np.ndarray] = []

        async def watch() -> None:
            async for event in video_stream:
                frames.append(event.frame)

        async def listen() -> None:
            async for event in audio_stream:
                heard.append(np.frombuffer(event.frame.data, np.int16).copy())

        watchers = [asyncio.ensure_future(watch()), asyncio.ensure_future(listen())]
        finished = await avatar.output.wait_for_playout()
        await asyncio.sleep(0.3)  # the last 100 ms the synchronizer holds
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await video_stream.aclose()
        await audio_stream.aclose()
        avatar.stop.set()
        outcome = await avatar.serving
        return finished, frames, heard, avatar, outcome

    finished, frames, heard, avatar, outcome = run(scenario())
    assert not finished.interrupted
    assert abs(finished.playback_position - seconds) <= 0.1
    assert avatar.started, "lk.playback_started reached the agent"
    assert frames and {(frame.width, frame.height) for frame in frames} == {(avatar.session.width,
                                                                             avatar.session.height)}
    sound = np.concatenate(heard).astype(np.float64)
    # what the room heard is the speech: its loudest 100 ms is as loud as the speech's own
    peak = max(np.sqrt(np.mean(sound[i:i + 4800] ** 2)) for i in range(0, len(sound) - 4800, 2400))
    speech_peak = max(np.sqrt(np.mean(speech[i:i + 2400].astype(np.float64) ** 2))
                      for i in range(0, len(speech) - 2400, 1200))
    assert peak > 0.5 * speech_peak
    assert outcome.end_reason.startswith("the job was stopped")
    assert outcome.utterances == 1 and outcome.agent_identity == AGENT
    assert avatar.session.ended.is_set()


def test_an_interruption_from_the_agent_is_reported_as_interrupted_at_the_position_reached(lite_worker):
    speech = speech_at(TTS_RATE, 4.0)

    async def scenario() -> tuple[Any, AvatarInRoom, Any]:
        avatar = AvatarInRoom(await open_session(lite_worker))
        await avatar.say(speech, TTS_RATE)
        while not avatar.started:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        avatar.output.clear_buffer()  # the agent's user interrupted: lk.clear_buffer to the avatar
        finished = await avatar.output.wait_for_playout()
        queued = avatar.session.queued_seconds
        avatar.stop.set()
        outcome = await avatar.serving
        return finished, avatar, (outcome, queued)

    finished, avatar, (outcome, queued) = run(scenario())
    assert finished.interrupted
    assert 0.2 < finished.playback_position < 3.5
    assert queued == 0
    assert outcome.interruptions == 1 and outcome.utterances == 0


@pytest.mark.parametrize("end", ["agent_leaves", "room_ends", "session_limit", "no_agent"])
def test_the_session_is_held_until_the_room_the_agent_or_a_limit_ends_it(lite_worker, end):
    async def scenario() -> tuple[Any, LiveSession]:
        session = await open_session(lite_worker)
        hub = LoopbackRooms()
        if end != "no_agent":
            hub.join(AGENT)
        room = hub.join(AVATAR)
        overrides = {"max_session_seconds": 0.5} if end == "session_limit" else {"agent_join_seconds": 0.5}
        serving = asyncio.ensure_future(
            livekit_door.serve_session(room, session, AGENT, limits(**overrides), asyncio.Event()))
        if end in ("agent_leaves", "room_ends"):
            await room.local_participant.track_published.wait()  # serving: frames are being published
            hub.leave(AGENT) if end == "agent_leaves" else room.drop()
        return await serving, session

    outcome, session = run(scenario())
    expected = {"agent_leaves": "the agent left the room", "room_ends": "the room ended or removed the avatar",
                "session_limit": "its maximum length of 0.5 s", "no_agent": "no agent joined the room within 0.5 s"}
    assert expected[end] in outcome.end_reason
    assert session.ended.is_set() and session.end_reason == outcome.end_reason


# --- the live job's input: refused before anything is joined or decoded ---------------------------------------


class NoSessions:
    """A session engine that must not be reached: every refusal here comes before the portrait."""

    def check(self, fields: Any) -> None:
        return None

    async def open(self, fields: Any) -> Any:
        raise AssertionError("a refused live job opened a session")


def live_job(**fields: Any) -> dict[str, Any]:
    body = {"livekit_url": "ws://127.0.0.1:7880", "livekit_token": mint_token(), "avatar_id": "astronaut", **fields}
    return {"id": "live-1", "input": {"live": {key: value for key, value in body.items() if value is not None}}}


def job_error(job: dict[str, Any], allow_private: bool = True) -> str:
    result = run(run_live_job(job, NoSessions(), limits(allow_private_urls=allow_private), asyncio.Event()))
    assert "success" not in result
    return result["error"]


@pytest.mark.parametrize(("fields", "code", "names"), [
    ({"livekit_url": None}, "INVALID_INPUT", "livekit_url"),
    ({"livekit_url": "https://example.invalid"}, "INVALID_INPUT", "ws:// or wss://"),
    ({"livekit_url": "wss://"}, "INVALID_INPUT", "livekit_url"),
    ({"livekit_url": "ws://user:pw@127.0.0.1"}, "INVALID_INPUT", "credentials"),
    ({"livekit_token": None}, "INVALID_INPUT", "livekit_token"),
    ({"livekit_token": "not-a-jwt"}, "INVALID_INPUT", "livekit_token is not a JWT"),
    ({"livekit_token": "a.!!!.c"}, "INVALID_INPUT", "livekit_token"),
    ({"livekit_token": mint_token(room=None)}, "INVALID_INPUT", "roomJoin"),
    ({"livekit_token": mint_token(video={"roomJoin": True})}, "INVALID_INPUT", "no named room"),
    ({"livekit_token": mint_token(sub="")}, "INVALID_INPUT", "identity"),
    ({"livekit_token": mint_token(exp=None)}, "INVALID_INPUT", "no expiry"),
    ({"livekit_token": mint_token(ttl_seconds=-30)}, "INVALID_INPUT", "expired"),
    ({"agent_identity": 7}, "INVALID_INPUT", "agent_identity"),
])
def test_bad_room_fields_are_refused_naming_the_field(fields, code, names, caplog):
    job = live_job(**fields)
    with caplog.at_level(logging.DEBUG):
        error = job_error(job)
    assert error.startswith(f"{code}: ") and names in error
    token = job["input"]["live"].get("livekit_token")
    if token and len(token) > 20:
        assert token not in error and token not in caplog.text


def test_a_live_job_puts_its_fields_inside_live():
    error = job_error({"id": "x", "input": {"live": live_job()["input"]["live"], "image_url": "http://x"}})
    assert error.startswith("INVALID_INPUT: 'image_url'") and "inside `live`" in error
    assert job_error({"id": "x", "input": {"live": "wss://x"}}).startswith("INVALID_INPUT: live must be an object")


def test_a_private_livekit_host_is_refused_like_a_job_url():
    error = job_error(live_job(livekit_url="ws://10.1.2.3:7880"), allow_private=False)
    assert error.startswith("FETCH_FAILED: livekit_url points to a non-public address (10.1.2.3)")


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a firewall that swallows, a hung server)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


@pytest.mark.parametrize("server", ["closed_port", "silent"])
def test_an_unreachable_livekit_server_fails_with_fetch_failed_by_its_deadline(server, caplog):
    token = mint_token()
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(silent_server()) if server == "silent" else free_port()
        job = live_job(livekit_url=f"ws://127.0.0.1:{port}", livekit_token=token)
        with caplog.at_level(logging.DEBUG):
            result = run(run_live_job(job, NoSessions(), limits(connect_seconds=1.0), asyncio.Event()))
    assert result["error"].startswith("FETCH_FAILED: livekit_url: the LiveKit server at '127.0.0.1'")
    # the silent server is given up on by the connect deadline, not by the hang guard
    why = "did not answer in time" if server == "silent" else "refused or failed the connection"
    assert f"{why} (joining room '{ROOM}' within 1 s)" in result["error"]
    assert token not in result["error"] and token not in caplog.text


@pytest.fixture
def keep_signals() -> Iterator[None]:
    """A RunPodHandler installs its worker stop over SIGTERM and SIGINT: put the test process's own back."""
    import signal

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handling in previous.items():
        signal.signal(signum, handling)


@pytest.mark.parametrize(("env", "fields", "expected"), [
    ({"LIVE_MAX_SESSIONS": "0"}, {}, "SESSION_LIMIT: this worker holds 0 live sessions"),
    ({}, {"audio_url": "http://127.0.0.1/a.wav"}, "INVALID_INPUT: audio_url is a field of a rendering job"),
    ({}, {"resolution": "tiny"}, "INVALID_INPUT: resolution"),
])
def test_the_runpod_handler_refuses_a_live_job_before_joining_its_room(env, fields, expected, keep_signals):
    """Routed by RunPodHandler; the room's URL is a closed port, so joining first would fail FETCH_FAILED instead."""
    from handler.runpod_handler import RunPodHandler

    handler = RunPodHandler(start_worker({"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1", **env}))
    job = live_job(livekit_url=f"ws://127.0.0.1:{free_port()}", **fields)
    result = run(handler(job))
    assert result["error"].startswith(expected)


def test_a_streaming_endpoint_answers_a_live_job_with_its_result_as_the_one_item(keep_signals):
    from handler.runpod_handler import AGGREGATE_FLAG, RunPodHandler

    handler = RunPodHandler(start_worker({"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1"}))
    config: dict[str, Any] = {}

    async def items() -> list[Any]:
        return [item async for item in handler.stream(live_job(livekit_url=f"ws://127.0.0.1:{free_port()}"), config)]

    (result,) = run(items())
    assert result["error"].startswith("FETCH_FAILED: livekit_url") and config[AGGREGATE_FLAG] is True


@pytest.mark.parametrize("how", ["sigterm", "cancel"])
def test_a_runpod_live_job_holds_its_room_until_stopped_and_leaves_it(how, monkeypatch, keep_signals):
    """The RunPod door end to end, its room joined in the loopback (livekit_door.join_room stood in for)."""
    import signal

    from handler.runpod_handler import RunPodHandler

    hub = LoopbackRooms()
    rooms: list[FakeRoom] = []

    async def join_loopback(target: Any, timeout_seconds: float) -> FakeRoom:
        rooms.append(hub.join(target.identity))
        return rooms[-1]

    monkeypatch.setattr(livekit_door, "join_room", join_loopback)
    handler = RunPodHandler(start_worker({"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1"}))
    job = live_job(avatar_id=None, image_file=PORTRAIT, resolution="192*192")

    async def scenario() -> Any:
        hub.join(AGENT)
        call = asyncio.ensure_future(handler(job))
        while not (rooms and rooms[0].local_participant.published):
            await asyncio.sleep(0.02)
        if how == "cancel":
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await call
            return None
        handler._stop._on_signal(signal.SIGTERM, None)  # what the worker's SIGTERM handler runs
        return await call

    result = run(scenario())
    assert not rooms[0].isconnected(), "the avatar left its room"
    if how == "sigterm":
        assert result["success"] and result["end_reason"].startswith("the job was stopped")
        assert (result["room"], result["identity"], result["agent_identity"]) == (ROOM, AVATAR, AGENT)
        assert result["num_frames"] > 0 and result["duration_seconds"] > 0 and result["model"] == "lite"


def test_tokens_minted_for_an_avatar_carry_what_the_worker_reads():
    claims = read_token_claims(mint_token(), time.time())
    assert (claims.room, claims.identity, claims.publish_on_behalf) == (ROOM, AVATAR, AGENT)



# --- the agent side: talking_head_livekit ------------------------------------------------------------------------


class FakeAgentOutput:
    audio: Any = None

    def replace_audio_tail(self, sink: Any) -> None:
        self.audio = sink


class FakeAgentSession(rtc.EventEmitter):
    """What AvatarSession.start uses of an AgentSession: its events and its audio output."""

    def __init__(self) -> None:
        super().__init__()
        self.output = FakeAgentOutput()


class AvatarInLoopback:
    """A launcher that runs our avatar worker in the loopback room, as LocalAvatarProcess or a RunPod job
    would in a real one: it reads the job input the plugin made with the worker's own parser."""

    def __init__(self, hub: LoopbackRooms, worker: Any) -> None:
        self.hub, self.worker = hub, worker
        self.stopping = asyncio.Event()
        self.request: Any = None
        self.outcome: Any = None

    async def launch(self, job_input: dict[str, Any]) -> None:
        self.request = parse_live_input(job_input, time.time())
        room = self.hub.join(self.request.target.identity)
        session = await open_session(self.worker)
        self.serving = asyncio.ensure_future(livekit_door.serve_session(
            room, session, self.request.target.agent_identity, limits(), self.stopping))

    async def stop(self) -> None:
        self.stopping.set()
        self.outcome = await self.serving


def test_an_agent_adds_the_avatar_with_the_plugin_and_its_speech_plays(lite_worker):
    from talking_head_livekit import AvatarSession

    seconds = 1.0
    speech = speech_at(TTS_RATE, seconds)

    async def scenario() -> tuple[Any, AvatarInLoopback]:
        hub = LoopbackRooms()
        agent_room = hub.join(AGENT)
        launcher = AvatarInLoopback(hub, lite_worker)
        agent_session = FakeAgentSession()
        avatar = AvatarSession(image_path=ASSETS / "portrait.jpg", launcher=launcher, livekit_url="wss://lk.example",
                               api_key=API_KEY, api_secret=API_SECRET)
        await avatar.start(agent_session, agent_room)
        output = agent_session.output.audio
        assert isinstance(output, DataStreamAudioOutput)
        for frame in pcm_frames(speech, TTS_RATE):
            await output.capture_frame(frame)
        output.flush()
        finished = await output.wait_for_playout()
        await avatar.wait_for_join(timeout=HANG_GUARD_SECONDS)
        await avatar.aclose()
        return finished, launcher

    finished, launcher = run(scenario())
    assert not finished.interrupted and abs(finished.playback_position - seconds) <= 0.1
    target = launcher.request.target
    assert (target.url, target.room, target.identity, target.agent_identity) == ("wss://lk.example", ROOM, AVATAR,
                                                                                 AGENT)
    assert launcher.request.session_fields == {"image_file": PORTRAIT}
    assert launcher.outcome.end_reason.startswith("the job was stopped") and launcher.outcome.utterances == 1


class RunPodApi(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, dict[str, str], Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        RunPodApi.requests.append((self.path, dict(self.headers), json.loads(body) if body else None))
        answer = json.dumps({"id": "job-42", "status": "IN_QUEUE"} if self.path.endswith("/run") else {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_runpod_launcher_queues_the_live_job_and_cancels_it():
    from talking_head_livekit import RunPodAvatarJob

    RunPodApi.requests.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RunPodApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    job_input = {"live": {"livekit_url": "wss://lk.example", "livekit_token": mint_token(), "avatar_id": "astronaut"}}
    try:
        launcher = RunPodAvatarJob("endpoint-1", api_key="rp-key", api_base=f"http://127.0.0.1:{server.server_port}/v2")

        async def scenario() -> str | None:
            await launcher.launch(job_input)
            queued = launcher.job_id
            await launcher.stop()
            return queued

        queued = run(scenario())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert queued == "job-42" and launcher.job_id is None
    (run_path, run_headers, run_body), (cancel_path, _, _) = RunPodApi.requests
    assert (run_path, cancel_path) == ("/v2/endpoint-1/run", "/v2/endpoint-1/cancel/job-42")
    assert run_headers["Authorization"] == "Bearer rp-key" and run_body == {"input": job_input}


def test_the_local_avatar_process_runs_the_live_job_and_reports_its_result():
    """`python -m handler.livekit_job` beside an agent: input on stdin, result on stdout (here: the server is down)."""
    from talking_head_livekit import LocalAvatarProcess

    token = mint_token()
    launcher = LocalAvatarProcess(worker_dir=ROOT, env={"MODEL_BACKEND": "lite", "ALLOW_PRIVATE_URLS": "1"})

    async def scenario() -> Any:
        await launcher.launch({"live": {"livekit_url": f"ws://127.0.0.1:{free_port()}", "livekit_token": token,
                                        "image_file": PORTRAIT}})
        return await launcher.wait(HANG_GUARD_SECONDS)

    result = run(scenario())
    assert result["error"].startswith("FETCH_FAILED: livekit_url: the LiveKit server at '127.0.0.1'")


def test_the_plugin_takes_exactly_one_portrait():
    from talking_head_livekit import portrait_fields

    assert portrait_fields(avatar_id="astronaut") == {"avatar_id": "astronaut"}
    with pytest.raises(ValueError, match="exactly one of image_path, image_url, avatar_id"):
        portrait_fields(image_url="https://x/p.jpg", avatar_id="astronaut")


def test_the_example_agent_starts_its_avatar_beside_it_or_on_runpod(monkeypatch):
    import runpy

    from talking_head_livekit import LocalAvatarProcess, RunPodAvatarJob

    example = runpy.run_path(str(ROOT / "examples" / "livekit_agent.py"), run_name="example")
    for name in ("AVATAR_RUNPOD_ENDPOINT_ID", "AVATAR_ID", "AVATAR_IMAGE_URL", "AVATAR_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(example["avatar_launcher"](), LocalAvatarProcess)
    assert example["portrait"]() == {"image_path": str(ROOT / "assets" / "portrait.jpg")}
    monkeypatch.setenv("AVATAR_RUNPOD_ENDPOINT_ID", "endpoint-1")
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-key")
    assert isinstance(example["avatar_launcher"](), RunPodAvatarJob)
