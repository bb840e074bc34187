"""Live sessions (docs/CONTRACT.md, "Live sessions"): the engine (handler/live_session.py) on the real
lite backend in-process, and the WebRTC door of the always-on server over a real peer connection on
127.0.0.1: an aiortc client sends assets/speech.wav as its microphone and receives the avatar's video
and the speech back, measured on the decoded media; then the refusals, each a coded JSON error."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile

from handler.errors import ErrorCode, JobError
from handler.job import Worker
from handler.live_audio import StreamingResampler
from handler.live_session import JITTER_SECONDS, LiveSessions, SessionLimitError
from handler.settings import WorkerSettings
from model.declaration import LiveSupport
from model.lite.backend import LiteBackend
from tests.conftest import ASSETS
from tests.lip_measure import LOWER_INNER_LIP, NOSE_TIP, NOSE_TOP, UPPER_INNER_LIP, LipMeter
from tests.test_server import ServerProcess

PORTRAIT = (ASSETS / "portrait.jpg").read_bytes()
PORTRAIT_FIELD = base64.b64encode(PORTRAIT).decode()
RESOLUTION = "320*320"  # small frames: cheap to render, encode and decode, large enough for dlib's face model
SPEECH_SECONDS = 4.0  # of assets/speech.wav, sent as the client's microphone
TAIL_SECONDS = 1.5  # received after the speech ends: its last frames, then idle ones
RATE = 48_000
API_KEY = "live-test-key-never-logged"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _speech(seconds: float, rate: int = RATE) -> np.ndarray:
    speech, source_rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    speech = speech[: round(seconds * source_rate)]
    return speech if rate == source_rate else StreamingResampler(source_rate, rate).process(speech)


def _envelope(samples: np.ndarray, rate: int, window_seconds: float) -> np.ndarray:
    """RMS over consecutive windows."""
    size = round(rate * window_seconds)
    count = len(samples) // size
    return np.sqrt(np.mean(np.square(samples[: count * size].reshape(count, size), dtype=np.float64), axis=1))


def _best_lag_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[float, int]:
    """The highest Pearson correlation of `a[i]` with `b[i + lag]` over |lag| <= max_lag, and its lag."""
    best = (-1.0, 0)
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[: len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: len(b) + lag])
        n = min(len(x), len(y))
        if n > 10 and x[:n].std() > 0 and y[:n].std() > 0:
            best = max(best, (float(np.corrcoef(x[:n], y[:n])[0, 1]), lag))
    return best


@pytest.mark.parametrize("source, target", [(48_000, 16_000), (16_000, 48_000), (44_100, 16_000), (24_000, 48_000)])
def test_speech_resampled_in_pieces_is_what_one_conversion_gives_without_clicks(source, target):
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(source) / source)).astype(np.float32)
    whole = StreamingResampler(source, target).process(tone)
    resampler = StreamingResampler(source, target)
    sizes = np.random.default_rng(1).integers(1, 2000, 200)
    edges = np.minimum(np.cumsum(np.concatenate([[0], sizes])), len(tone))
    pieces = np.concatenate([resampler.process(tone[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)]
                            + [resampler.process(tone[edges[-1]:])])
    assert len(pieces) == len(whole) and np.abs(pieces - whole).max() < 1e-6
    # the tone itself, at the new rate, past the first millisecond (the filter's delay); no click anywhere
    expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(whole)) / target)
    settled = round(0.002 * target)
    assert np.abs(whole[settled:] - expected[settled:]).max() < 1e-3
    assert len(whole) >= target - round(0.002 * target)


# --- the engine, in-process, on the real lite backend --------------------------------------------------


class _RecordingsOnly(LiteBackend):
    """lite as a backend that renders finished recordings only (what wan-s2v declares)."""

    declaration = dataclasses.replace(LiteBackend.declaration, live=LiveSupport())


@pytest.fixture(scope="module")
def lite() -> LiteBackend:
    return LiteBackend()


def _sessions(backend: LiteBackend, **env: str) -> LiveSessions:
    settings = WorkerSettings.from_env(env)
    return LiveSessions(Worker(settings, backend, None), settings)


def _live_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("live-render")]


def test_the_speech_leaves_with_the_frames_that_show_it_unchanged_and_in_order(lite):
    async def run() -> tuple[list, np.ndarray]:
        session = await _sessions(lite).open({"image_file": PORTRAIT_FIELD, "resolution": "256*256"})
        speech = _speech(2.0)
        for start in range(0, len(speech), 960):  # 20 ms pieces, all at once: faster than spoken (a TTS)
            session.push_audio(speech[start:start + 960], RATE)
        frames = [await session.next_output(paced=False) for _ in range(60)]
        await session.end("the test is over")
        return frames, speech

    frames, speech = asyncio.run(run())
    assert [frame.index for frame in frames] == list(range(60))
    assert all(frame.image.shape == (frames[0].image.shape[0], frames[0].image.shape[1], 3) for frame in frames)
    assert all(frame.audio_48k_int16.shape == (1920,) and frame.audio_48k_int16.dtype == np.int16 for frame in frames)
    carried = np.concatenate([frame.audio_48k_int16[: frame.speech_samples] for frame in frames]) / 32767.0
    # all of it, but the resampler's last millisecond, which waits for the next piece
    assert len(speech) - 48 <= len(carried) <= len(speech)
    assert np.abs(carried - speech[: len(carried)]).max() < 2e-4
    speaking = [frame.speaking for frame in frames]
    assert speaking[: len(speaking) - 10] == [True] * (len(speaking) - 10) and not any(speaking[-9:])
    assert _live_threads() == []


def test_an_interruption_drops_the_queued_speech_at_the_next_frame(lite):
    async def run() -> tuple[list, list]:
        session = await _sessions(lite).open({"image_file": PORTRAIT_FIELD, "resolution": "256*256"})
        session.push_audio((_speech(1.0) * 32767).astype(np.int16), RATE)  # int16, one piece of 1 s
        before = [await session.next_output(paced=False) for _ in range(10)]
        session.interrupt()
        after = [await session.next_output(paced=False) for _ in range(5)]
        queued = session.queued_seconds
        await session.end("the test is over")
        return before + [queued], after

    before, after = asyncio.run(run())
    assert all(frame.speaking and frame.speech_samples == 1920 for frame in before[:-1])
    assert before[-1] == 0.0
    assert not any(frame.speaking or frame.speech_samples or frame.audio_48k_int16.any() for frame in after)


def test_a_short_spurt_is_shown_once_its_pushes_stop_and_silence_is_not_queued(lite):
    async def run() -> tuple[list, float, float]:
        session = await _sessions(lite).open({"image_file": PORTRAIT_FIELD, "resolution": "256*256"})
        silence = np.zeros(960, np.float32)
        session.push_audio(silence, RATE)  # a microphone's silence before anyone speaks: not queued
        queued_silence = session.queued_seconds
        burst = _speech(1.5)[round(0.3 * RATE):round(0.34 * RATE)]  # 40 ms of speech, less than the jitter buffer
        session.push_audio(burst, RATE)
        waiting = [await session.next_output(paced=False) for _ in range(2)]  # pushes just stopped: still held
        await asyncio.sleep(0.1)
        shown = [await session.next_output(paced=False) for _ in range(3)]
        queued_burst = session.queued_seconds
        await session.end("the test is over")
        return waiting + shown, queued_silence, queued_burst

    frames, queued_silence, queued_burst = asyncio.run(run())
    assert queued_silence == 0.0
    assert not frames[0].speaking and not frames[1].speaking, "held until the spurt is buffered or its pushes stop"
    assert frames[2].speaking and sum(frame.speech_samples for frame in frames) >= 1800
    assert queued_burst == 0.0
    assert 0.04 < JITTER_SECONDS


def test_a_paced_session_that_fell_behind_drops_its_oldest_speech_and_an_unpaced_one_keeps_it(lite):
    async def run(paced: bool) -> tuple[float, float, np.ndarray]:
        session = await _sessions(lite).open({"image_file": PORTRAIT_FIELD, "resolution": "256*256"})
        speech = _speech(1.0)
        for start in range(0, len(speech), 960):  # a second of microphone pieces arriving at once (a stall)
            session.push_audio(speech[start:start + 960], RATE)
        first = await session.next_output(paced=paced)
        assert first is not None
        queued, dropped = session.queued_seconds, session.dropped_seconds
        await session.end("the test is over")
        return queued, dropped, first.audio_48k_int16[: first.speech_samples] / 32767.0

    queued, dropped, shown = asyncio.run(run(paced=True))
    assert 0.8 <= dropped <= 0.92 and queued <= JITTER_SECONDS
    speech = _speech(1.0)
    start = round(dropped * RATE)  # what is shown first is where the kept speech begins
    assert np.abs(shown - speech[start:start + len(shown)]).max() < 2e-4
    queued, dropped, shown = asyncio.run(run(paced=False))
    assert dropped == 0.0 and queued > 0.9 and np.abs(shown - speech[: len(shown)]).max() < 2e-4


def test_a_session_ends_on_its_idle_timeout_and_its_maximum_length_leaving_no_thread(lite):
    async def run(env: dict[str, str], speak: bool) -> str | None:
        session = await _sessions(lite, **env).open({"image_file": PORTRAIT_FIELD, "resolution": "256*256"})
        deadline = time.monotonic() + 30
        while not session.ended.is_set():
            assert time.monotonic() < deadline, "the session did not end"
            if speak:
                session.push_audio(_speech(1.0)[RATE // 2:RATE // 2 + 960], RATE)
            await session.next_output(paced=True)
        assert await session.next_output() is None
        return session.end_reason

    idle = asyncio.run(run({"LIVE_IDLE_TIMEOUT_SECONDS": "0.3"}, speak=False))
    assert idle is not None and "LIVE_IDLE_TIMEOUT_SECONDS=0.3" in idle
    longest = asyncio.run(run({"LIVE_MAX_SESSION_SECONDS": "0.5", "LIVE_IDLE_TIMEOUT_SECONDS": "60"}, speak=True))
    assert longest is not None and "LIVE_MAX_SESSION_SECONDS=0.5" in longest
    assert _live_threads() == []


def test_refusals_come_before_any_media_work(lite):
    async def run() -> dict[str, JobError]:
        refused: dict[str, JobError] = {}
        cases = {
            "unsupported": (_sessions(_RecordingsOnly()), {"image_file": PORTRAIT_FIELD}),
            "none allowed": (_sessions(lite, LIVE_MAX_SESSIONS="0"), {"image_file": PORTRAIT_FIELD}),
            "speech field": (_sessions(lite), {"image_file": PORTRAIT_FIELD, "audio_url": "http://127.0.0.1:9/a.wav"}),
            "no portrait": (_sessions(lite), {"resolution": "256*256"}),
            "no face": (_sessions(lite), {"image_file": base64.b64encode(_grey_png()).decode()}),
        }
        for name, (sessions, fields) in cases.items():
            try:
                await sessions.open(fields)
            except JobError as error:
                refused[name] = error
        return refused

    refused = asyncio.run(run())
    assert refused["unsupported"].code is ErrorCode.LIVE_UNSUPPORTED
    assert "renders finished recordings only" in refused["unsupported"].message
    assert isinstance(refused["none allowed"], SessionLimitError) and refused["none allowed"].retry_after > 0
    assert "LIVE_MAX_SESSIONS" in refused["none allowed"].message
    assert refused["speech field"].code is ErrorCode.INVALID_INPUT and "audio_url" in refused["speech field"].message
    assert refused["no portrait"].code is ErrorCode.INVALID_INPUT and "image_file" in refused["no portrait"].message
    assert refused["no face"].code is ErrorCode.NO_FACE and "image_file" in refused["no face"].message


def _grey_png() -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))
    assert ok
    return data.tobytes()


# --- the WebRTC door of the always-on server ----------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess({"MODEL_BACKEND": "lite", "LIVE_MAX_SESSIONS": "1", "SERVER_API_KEY": API_KEY},
                            tmp_path_factory.mktemp("live"))
    yield process
    process.stop()


@dataclasses.dataclass
class _Call:
    """What the client of one session saw."""

    answer: dict
    video: list[np.ndarray]
    video_pts: list[int]
    audio: np.ndarray  # received, mixed to mono, float at 48 kHz
    audio_rate: int
    second_offer: requests.Response
    health_during: dict
    delete_without_key: requests.Response
    deleted: requests.Response
    deleted_again: requests.Response
    health_after: dict
    client_state_after: str


async def _offer(audio: bool = True, video_direction: str | None = "recvonly") -> tuple[object, str]:
    """An aiortc client's peer connection and its offer's SDP."""
    from aiortc import RTCConfiguration, RTCPeerConnection
    from aiortc.contrib.media import MediaPlayer

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if audio:
        pc.addTrack(MediaPlayer(str(ASSETS / "speech.wav")).audio)
    if video_direction is not None:
        pc.addTransceiver("video", direction=video_direction)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def _post_session(server: ServerProcess, body: dict) -> requests.Response:
    return requests.post(f"{server.url}/sessions", json=body, headers=AUTH, timeout=60)


async def _call(server: ServerProcess, speech_path: Path) -> _Call:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer
    from aiortc.mediastreams import MediaStreamError

    from handler.webrtc_door import _allow_loopback_candidates

    _allow_loopback_candidates()  # as the server does: this machine may have no other interface
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    player = MediaPlayer(str(speech_path))
    pc.addTrack(player.audio)
    pc.addTransceiver("video", direction="recvonly")
    video: list[np.ndarray] = []
    video_pts: list[int] = []
    audio: list[np.ndarray] = []
    rates: list[int] = []
    readers: list[asyncio.Task] = []

    async def read(track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    video.append(frame.to_ndarray(format="rgb24"))
                    video_pts.append(frame.pts)
                else:
                    channels = len(frame.layout.channels)
                    audio.append(frame.to_ndarray().reshape(-1, channels).mean(axis=1) / 32768.0)
                    rates.append(frame.sample_rate)

    pc.on("track", lambda track: readers.append(asyncio.ensure_future(read(track))))
    await pc.setLocalDescription(await pc.createOffer())
    body = {"sdp": pc.localDescription.sdp, "type": "offer", "image_file": PORTRAIT_FIELD, "resolution": RESOLUTION}
    reply = await asyncio.to_thread(_post_session, server, body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    # the worker holds one session (LIVE_MAX_SESSIONS=1): a second offer meanwhile is refused
    _, second_sdp = await _offer()
    second = await asyncio.to_thread(_post_session, server, {"sdp": second_sdp, "type": "offer", "avatar_id": "x"})
    health_during = await asyncio.to_thread(server.health)
    await asyncio.sleep(SPEECH_SECONDS + TAIL_SECONDS)
    url = f"{server.url}/sessions/{answer['session_id']}"
    unauthorized = await asyncio.to_thread(requests.delete, url, timeout=30)
    deleted = await asyncio.to_thread(requests.delete, url, headers=AUTH, timeout=30)
    deadline = time.monotonic() + 30
    while pc.connectionState not in ("closed", "failed"):  # the server closes its side
        assert time.monotonic() < deadline, f"the server did not close the peer: {pc.connectionState}"
        await asyncio.sleep(0.1)
    deleted_again = await asyncio.to_thread(requests.delete, url, headers=AUTH, timeout=30)
    health_after = await asyncio.to_thread(server.health)
    state = pc.connectionState
    await pc.close()
    for reader in readers:
        reader.cancel()
    return _Call(answer, video, video_pts, np.concatenate(audio) if audio else np.zeros(0), rates[0] if rates else 0,
                 second, health_during, unauthorized, deleted, deleted_again, health_after, state)


@pytest.fixture(scope="module")
def call(live_server, tmp_path_factory) -> _Call:
    speech_path = tmp_path_factory.mktemp("speech") / "speech.wav"
    soundfile.write(speech_path, _speech(SPEECH_SECONDS, 16_000), 16_000)
    return asyncio.run(_call(live_server, speech_path))


def test_the_avatar_arrives_at_25_fps_at_the_sessions_size(call):
    answer = call.answer
    assert answer["type"] == "answer" and answer["sdp"].startswith("v=0") and len(answer["session_id"]) >= 20
    assert answer["fps"] == 25.0 and answer["width"] * answer["height"] <= 320 * 320
    assert all(frame.shape == (answer["height"], answer["width"], 3) for frame in call.video)
    # the stream's own clock: one frame every 1/25 s (90 kHz RTP ticks); none lost on loopback
    steps = np.diff(call.video_pts)
    assert len(steps) > 0 and np.median(steps) == 3600
    expected = (SPEECH_SECONDS + TAIL_SECONDS) * 25
    print(f"received {len(call.video)} frames over {SPEECH_SECONDS + TAIL_SECONDS:.1f} s (about {expected:.0f} sent)")
    assert len(call.video) >= 0.6 * expected


def test_the_speech_comes_back_complete(call):
    sent = _speech(SPEECH_SECONDS)
    assert call.audio_rate == RATE
    sent_envelope, received_envelope = _envelope(sent, RATE, 0.01), _envelope(call.audio, RATE, 0.01)
    # the received audio starts with the silence before the speech arrived: find where the speech sits in it
    score, lag = _best_lag_correlation(sent_envelope, received_envelope, len(received_envelope) - len(sent_envelope))
    # second by second, each allowed its own small shift: on a busy machine the jitter buffer may have run
    # dry and waited once or twice, which moves what follows by a frame
    parts = []
    for start in range(0, len(sent_envelope) - 100 + 1, 100):
        part = sent_envelope[start:start + 100]
        nearby = received_envelope[max(0, lag + start - 20):lag + start + 120]
        parts.append(_best_lag_correlation(part, nearby, len(nearby) - len(part))[0])
    print(f"envelope correlation {score:.3f} at {lag * 10} ms; second by second {np.round(parts, 3)}")
    assert np.median(parts) > 0.85 and min(parts) > 0.6
    # as much speech came back as was sent: 10 ms bins louder than a quarter of each one's loud level
    # (the gain of Opus and the client's channel mix aside)
    sent_loud = (sent_envelope > 0.25 * np.percentile(sent_envelope, 95)).sum()
    received_loud = (received_envelope > 0.25 * np.percentile(received_envelope, 95)).sum()
    print(f"loud 10 ms bins: {sent_loud} sent, {received_loud} received")
    assert received_loud >= 0.9 * sent_loud, "speech is missing from what came back"


def test_the_lips_follow_the_loudness_of_the_speech_they_carry(call):
    meter = LipMeter()
    # dlib's detector once (it costs ~0.2 s a frame), its 68-point predictor on every frame: the head sways
    # by a few pixels only
    box = meter.face_box(call.video[0])
    assert box is not None, "dlib finds no face in the received video"
    opening = np.array([_inner_lip_gap(meter.points(np.ascontiguousarray(frame), box)) for frame in call.video])
    per_frame = round(RATE / 25)
    loudness = 20 * np.log10(_envelope(call.audio, RATE, per_frame / RATE) + 1e-4)
    score, lag = _best_lag_correlation(opening, loudness, 12)
    print(f"lip opening vs loudness heard: correlation {score:.3f} at {lag} frames")
    assert score > 0.4
    assert abs(lag) <= 4, "picture and sound arrive out of step"


def _inner_lip_gap(points: np.ndarray) -> float:
    """The inner lips' mean gap over the nose's length (tests/lip_measure.py's measure)."""
    gap = np.linalg.norm(points[list(UPPER_INNER_LIP)] - points[list(LOWER_INNER_LIP)], axis=1).mean()
    return float(gap / max(np.linalg.norm(points[NOSE_TOP] - points[NOSE_TIP]), 1.0))


def test_delete_ends_the_session_and_the_server_holds_none(call):
    assert call.second_offer.status_code == 429, call.second_offer.text
    assert call.second_offer.json()["error"].startswith("SESSION_LIMIT: ")
    assert int(call.second_offer.headers["Retry-After"]) > 0
    assert call.health_during["live_sessions"] == 1 and call.health_during["live_capacity"] == 1
    assert call.delete_without_key.status_code == 401, "the session outlives a DELETE without the API key"
    assert call.deleted.status_code == 204
    assert call.deleted_again.status_code == 404 and call.deleted_again.json()["success"] is False
    assert call.health_after["live_sessions"] == 0
    assert call.client_state_after in ("closed", "failed")


def _offer_sdp(**kwargs) -> str:
    async def make() -> str:
        pc, sdp = await _offer(**kwargs)
        await pc.close()
        return sdp

    return asyncio.run(make())


@pytest.fixture(scope="module")
def offers() -> dict[str, str]:
    return {"good": _offer_sdp(), "no audio": _offer_sdp(audio=False), "no video": _offer_sdp(video_direction=None)}


@pytest.mark.parametrize("case, status, code, named", [
    ("not json", 415, "INVALID_INPUT", "application/json"),
    ("not an offer", 400, "INVALID_INPUT", "type"),
    ("no sdp", 400, "INVALID_INPUT", "sdp"),
    ("huge sdp", 413, "TOO_LARGE", "sdp"),
    ("garbage sdp", 400, "INVALID_INPUT", "sdp"),
    ("no audio track", 400, "INVALID_INPUT", "audio"),
    ("no video received", 400, "INVALID_INPUT", "video"),
    ("a job's speech field", 400, "INVALID_INPUT", "audio_url"),
    ("no portrait", 400, "INVALID_INPUT", "image_file"),
    ("bad resolution", 400, "INVALID_INPUT", "resolution"),
    ("no face", 422, "NO_FACE", "image_file"),
])
def test_a_bad_offer_is_refused_with_the_contracts_coded_error(live_server, offers, case, status, code, named, call):
    good = {"sdp": offers["good"], "type": "offer", "image_file": PORTRAIT_FIELD}
    bodies = {
        "not an offer": {**good, "type": "answer"},
        "no sdp": {"type": "offer", "image_file": PORTRAIT_FIELD},
        "huge sdp": {**good, "sdp": offers["good"] + "a=x-padding\r\n" * 8000},
        "garbage sdp": {**good, "sdp": "hello, server"},
        "no audio track": {**good, "sdp": offers["no audio"]},
        "no video received": {**good, "sdp": offers["no video"]},
        "a job's speech field": {**good, "audio_url": "http://127.0.0.1:9/speech.wav"},
        "no portrait": {"sdp": offers["good"], "type": "offer"},
        "bad resolution": {**good, "resolution": "huge"},
        "no face": {**good, "image_file": base64.b64encode(_grey_png()).decode()},
    }
    if case == "not json":
        reply = requests.post(f"{live_server.url}/sessions", data=b"sdp=v%3D0", timeout=30,
                              headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    else:
        reply = _post_session(live_server, bodies[case])
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error.startswith(f"{code}: ") and named in error
    assert live_server.health()["live_sessions"] == 0


def test_an_offer_without_the_api_key_is_refused_before_anything_else(live_server, offers):
    body = {"sdp": offers["good"], "type": "offer", "image_file": PORTRAIT_FIELD}
    reply = requests.post(f"{live_server.url}/sessions", json=body, timeout=30)
    assert reply.status_code == 401 and reply.json()["error"].startswith("INVALID_INPUT: ")
    assert "SERVER_API_KEY" in reply.json()["error"]


def test_the_live_page_is_served_or_its_absence_is_a_coded_error(live_server):
    from handler.http_server import LIVE_PAGE

    reply = requests.get(f"{live_server.url}/live", timeout=30)
    if LIVE_PAGE.is_file():
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
        assert reply.content == LIVE_PAGE.read_bytes()
    else:
        assert reply.status_code == 404 and reply.json()["error"].startswith("INTERNAL: ")


def test_the_server_logs_no_sdp_and_leaves_no_files(live_server, call, offers):
    log = live_server.log()
    for secret_line in ("a=ice-ufrag", "a=ice-pwd", "a=fingerprint", call.answer["sdp"].splitlines()[1]):
        assert secret_line not in log
    assert PORTRAIT_FIELD[:40] not in log and API_KEY not in log


def test_sigterm_ends_an_open_session_and_the_server_leaves_nothing(live_server, call, offers):
    async def open_then_stop() -> tuple[int, str]:
        from aiortc import RTCSessionDescription

        pc, sdp = await _offer()
        reply = await asyncio.to_thread(_post_session, live_server, {"sdp": sdp, "type": "offer",
                                                                      "image_file": PORTRAIT_FIELD})
        assert reply.status_code == 200, reply.text
        await pc.setRemoteDescription(RTCSessionDescription(reply.json()["sdp"], "answer"))
        returncode = await asyncio.to_thread(live_server.stop)
        state = pc.connectionState
        await pc.close()
        return returncode, state

    returncode, _ = asyncio.run(open_then_stop())
    assert returncode in (0, -signal.SIGTERM), live_server.log()[-3000:]
    assert "ended after" in live_server.log() and "the server is shutting down" in live_server.log()
    assert live_server.leftovers() == []
