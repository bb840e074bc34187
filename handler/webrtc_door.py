"""The WebRTC door of live sessions (aiortc): a browser's offer in, the avatar's tracks out.

Needs the `live` extra (aiortc): handler/http_server.py imports this module when the first offer
arrives, and answers LIVE_UNSUPPORTED naming the extra where it is missing.

`POST /sessions` (handler/http_server.py) hands `WebRTCDoor.answer` the request's JSON: the
browser's offer (`sdp`, `type` "offer") and a job's portrait fields. The offer must send audio (the
speech) and receive video; everything about it is judged before the session is opened, the
session's refusals (LIVE_UNSUPPORTED, SESSION_LIMIT, the portrait's) come before any media work,
and only then is a peer connection made. The peer's audio track feeds `LiveSession.push_audio`
(its channels mixed); one pump takes the session's paced frames and hands each frame's picture to
the video track and its speech (two 20 ms pieces) to the audio track, so both leave together.

A peer whose connection fails or closes, or that has not connected within CONNECT_SECONDS, ends
its session; a session that ends (DELETE /sessions/{id}, its limits, the server's stop) closes
its peer. No ICE servers are used unless the operator names some (`ice_servers`): host candidates
only, loopback's included, so that a client on the same machine connects without any traffic
leaving it. SDP is never logged: it carries the ICE credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import (
    MediaStreamError,
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from handler.errors import ErrorCode, JobError
from handler.live_session import LiveSession, LiveSessions

log = logging.getLogger(__name__)
# aioice logs every candidate pair it checks at INFO: a line per pair per session, addresses included
logging.getLogger("aioice").setLevel(logging.WARNING)

#: the largest offer taken: a browser's audio + video offer is 4-10 KB
MAX_SDP_BYTES = 64 * 1024
# A peer that has not connected this long after its answer was sent is given up, and its session ended.
CONNECT_SECONDS = 30.0
# Frames waiting for a track's sender: a sender that falls behind loses the oldest picture rather than
# gain delay. Speech may wait a little longer (200 ms) before any of it is lost, so a short stall costs
# no syllable; longer would let the sound trail the picture by that much for the rest of the session
# (measured in Chromium on a loaded machine: a 500 ms queue left the speech 0.6 s behind the lips).
VIDEO_QUEUE_FRAMES = 3
AUDIO_QUEUE_PIECES = 10
# Opus's piece: 20 ms at 48 kHz
AUDIO_PIECE_SAMPLES = 960
VIDEO_CLOCK_RATE = 90_000
OFFER_FIELDS = ("sdp", "type")


def _allow_loopback_candidates() -> None:
    """aioice gathers host candidates on every interface but loopback; add 127.0.0.1, so that a peer
    on the same machine connects even where it has no other interface (a container without network)."""
    gather = aioice.ice.get_host_addresses
    if getattr(gather, "with_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = gather(use_ipv4, use_ipv6)
        return [*addresses, "127.0.0.1"] if use_ipv4 and "127.0.0.1" not in addresses else addresses

    with_loopback.with_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = with_loopback


def check_offer(body: Mapping[str, Any]) -> str:
    """The offer's SDP, once it is one this door can answer; raises JobError(INVALID_INPUT) naming the field."""
    kind = body.get("type")
    if kind != "offer":
        shown = "missing" if kind is None else "not a string" if not isinstance(kind, str) else "not \"offer\""
        raise JobError(ErrorCode.INVALID_INPUT, f'type is {shown}: send the browser\'s offer as {{"sdp": '
                                                'pc.localDescription.sdp, "type": "offer"}.')
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise JobError(ErrorCode.INVALID_INPUT, "sdp is missing: send the offer's SDP text (pc.localDescription.sdp "
                                                "after setLocalDescription) as sdp.")
    size = len(sdp.encode())
    if size > MAX_SDP_BYTES:
        raise JobError(ErrorCode.TOO_LARGE, f"sdp is {size} bytes, more than the {MAX_SDP_BYTES} an offer of one "
                                            "audio and one video track needs; send the browser's own offer.")
    try:
        if not sdp.lstrip().startswith("v=0"):
            raise ValueError("it does not start with v=0")
        parsed = SessionDescription.parse(sdp)
    except Exception:  # noqa: BLE001 - whatever the parser trips on, the answer is the same
        raise JobError(ErrorCode.INVALID_INPUT, "sdp is not an SDP offer this server can read; send the "
                                                "browser's offer (pc.localDescription.sdp) unchanged.") from None
    directions = {media.kind: media.direction or "sendrecv" for media in parsed.media}
    if directions.get("audio") not in ("sendrecv", "sendonly"):
        raise JobError(ErrorCode.INVALID_INPUT, "sdp has no audio track to send: the avatar speaks what it hears; "
                                                "add the microphone (or any audio source) with pc.addTrack before "
                                                "creating the offer.")
    if directions.get("video") not in ("sendrecv", "recvonly"):
        raise JobError(ErrorCode.INVALID_INPUT, "sdp does not receive video: the avatar arrives as a video track; "
                                                "add pc.addTransceiver('video', {direction: 'recvonly'}) before "
                                                "creating the offer.")
    return sdp


def portrait_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's fields other than the offer's: a job's portrait fields, for the session to judge."""
    return {name: value for name, value in body.items() if name not in OFFER_FIELDS}


class WebRTCDoor:
    """Answers offers with peers bound to new live sessions; `close_all` (the server's stop) ends them."""

    def __init__(self, sessions: LiveSessions, ice_servers: Sequence[Mapping[str, Any]] = ()) -> None:
        self._sessions = sessions
        self._ice_servers = [dict(server) for server in ice_servers]
        self._peers: set[_Peer] = set()
        _allow_loopback_candidates()

    @property
    def peers(self) -> int:
        return len(self._peers)

    async def answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`{"sdp", "type": "answer", "session_id"}` for the offer in `body`; raises JobError with the
        contract's code (the offer's, then the session's, then the peer connection's)."""
        sdp = check_offer(body)
        session = await self._sessions.open(portrait_fields(body))
        peer: _Peer | None = None
        try:
            peer = _Peer(session, self._ice_servers, self._peers.discard)
            answer = await peer.answer(sdp)
            self._peers.add(peer)
        except BaseException as error:
            await session.end("its offer could not be answered")
            if peer is not None:
                await peer.abort()
            if isinstance(error, Exception) and not isinstance(error, JobError):
                log.info("live session %s: the offer could not be answered (%s)", session.id[:6], type(error).__name__)
                raise JobError(ErrorCode.INVALID_INPUT, (
                    "sdp could not be answered: the offer's media could not be negotiated (this server sends VP8 "
                    "or H.264 video and Opus audio); send a browser's offer unchanged.")) from None
            raise
        return {"sdp": answer, "type": "answer", "session_id": session.id, "width": session.width,
                "height": session.height, "fps": session.fps}

    async def close_all(self) -> None:
        await asyncio.gather(*(peer.closed() for peer in list(self._peers)))


class _Peer:
    """One browser's peer connection and the session it shows."""

    def __init__(self, session: LiveSession, ice_servers: list[dict[str, Any]],
                 forget: Callable[[_Peer], None]) -> None:
        servers = [RTCIceServer(**server) for server in ice_servers]
        self._pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._session = session
        self._forget = forget
        self._video = _QueuedTrack("video", VIDEO_QUEUE_FRAMES)
        self._audio = _QueuedTrack("audio", AUDIO_QUEUE_PIECES)
        self._tasks: set[asyncio.Task] = set()
        self._done = asyncio.Event()
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state)

    async def answer(self, sdp: str) -> str:
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self._pc.addTrack(self._audio)
        self._pc.addTrack(self._video)
        await self._pc.setLocalDescription(await self._pc.createAnswer())  # gathers the candidates
        self._spawn(self._watch())
        return self._pc.localDescription.sdp

    async def abort(self) -> None:
        """Close a peer whose answer failed (its session ended already)."""
        for task in list(self._tasks):
            task.cancel()
        await self._pc.close()
        self._done.set()

    async def closed(self) -> None:
        """End the session (if it is not already) and wait until the peer is closed."""
        await self._session.end("the server is shutting down")
        await self._done.wait()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_track(self, track) -> None:
        if track.kind == "audio":
            self._spawn(self._receive_speech(track))
        else:  # a browser that sends its camera too: taken and dropped, so nothing piles up
            self._spawn(self._drain(track))

    async def _on_state(self) -> None:
        state = self._pc.connectionState
        if state in ("failed", "closed"):
            await self._session.end(f"the peer's connection {state}")

    async def _receive_speech(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray()
                channels = len(frame.layout.channels)
                if frame.format.is_planar:
                    mono = pcm.astype(np.float32).mean(axis=0)
                else:
                    mono = pcm.reshape(-1, channels).astype(np.float32).mean(axis=1)
                scale = 32768.0 if pcm.dtype == np.int16 else 1.0
                self._session.push_audio(mono / scale, frame.sample_rate)

    async def _drain(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()

    async def _pump(self) -> None:
        """The session's paced frames to both tracks: one picture and two 20 ms pieces of speech each."""
        video_tick = round(VIDEO_CLOCK_RATE / self._session.fps)
        audio_base = fractions.Fraction(1, self._session.output_sample_rate)
        video_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        audio_pts = 0
        while (frame := await self._session.next_output(paced=True)) is not None:
            picture = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            picture.pts, picture.time_base = frame.index * video_tick, video_base
            self._video.put(picture)
            for start in range(0, len(frame.audio_48k_int16), AUDIO_PIECE_SAMPLES):
                samples = frame.audio_48k_int16[start:start + AUDIO_PIECE_SAMPLES]
                piece = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
                piece.sample_rate, piece.pts, piece.time_base = self._session.output_sample_rate, audio_pts, audio_base
                audio_pts += len(samples)
                self._audio.put(piece)

    async def _watch(self) -> None:
        """Start the frames once the peer is connected; end the session if it never connects; close the
        peer once its session ends."""
        try:
            await asyncio.wait_for(self._connected_or_ended(), CONNECT_SECONDS)
        except TimeoutError:
            await self._session.end(f"the peer did not connect within {CONNECT_SECONDS:g} s")
        if not self._session.ended.is_set():
            # frames from now: both senders take them from the first, so picture and sound start together
            self._spawn(self._pump())
        await self._session.ended.wait()
        self._video.finish()
        self._audio.finish()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        await self._pc.close()
        if self._video.dropped or self._audio.dropped:
            log.info("live session %s: its peer fell behind: %d video frames and %d audio pieces were dropped",
                     self._session.id[:6], self._video.dropped, self._audio.dropped)
        self._forget(self)
        self._done.set()

    async def _connected_or_ended(self) -> None:
        while self._pc.connectionState != "connected" and not self._session.ended.is_set():
            await asyncio.sleep(0.1)


class _QueuedTrack(MediaStreamTrack):
    """A local track whose frames a pump hands in and the sender takes as it goes."""

    def __init__(self, kind: str, size: int) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=size)
        #: frames dropped because the sender fell behind
        self.dropped = 0

    def put(self, item: Any) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # the sender fell behind: the oldest goes, the delay stays bounded
            self.dropped += 1
        self._queue.put_nowait(item)

    def finish(self) -> None:
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def recv(self) -> Any:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # any later recv ends too
            self.stop()
            raise MediaStreamError
        return item
