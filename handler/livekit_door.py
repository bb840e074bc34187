"""The LiveKit door: a live session as a LiveKit voice agent's avatar, on livekit-agents' own classes.

The agent side (talking_head_livekit, or any plugin of the same shape) sends its speech to the
avatar's participant with `DataStreamAudioOutput`; here `DataStreamAudioReceiver` takes it,
livekit's `AvatarRunner` feeds it to `SessionVideoGenerator` (our session engine behind
livekit's `VideoGenerator`) and publishes the frames and the speech they carry, paced by its
`AVSynchronizer`, as the avatar's tracks; the token's `lk.publish_on_behalf` attribute makes the
agent's users see them as the agent's. The runner answers the agent's `lk.clear_buffer` RPC (an
interruption: the session drops its queued speech) and reports `lk.playback_started` /
`lk.playback_finished` with the position reached, from the AudioSegmentEnd this generator yields
once an utterance has been shown in full.

This module imports livekit-agents (the `livekit` extra); handler/livekit_job.py imports it only
when a live job runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import cv2
import numpy as np
from livekit import rtc
from livekit.agents.utils import wait_for_participant
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    DataStreamAudioReceiver,
    VideoGenerator,
)

from handler.client_text import shown_value
from handler.errors import ErrorCode, JobError
from handler.livekit_job import URL_FIELD, LiveJobLimits, LiveJobRequest, RoomTarget, SessionOpener

log = logging.getLogger(__name__)

# The pieces the receiver cuts the agent's speech into: a session's network pieces are 10-40 ms, and
# the receiver's own 100 ms would hold each utterance's first sound back by that much.
RECEIVED_PIECE_MS = 20
# An utterance whose end arrived is reported finished after this many frames in a row show no
# speech, even if fewer of its seconds were shown than were sent (speech the session dropped).
FINISH_AFTER_SILENT_FRAMES = 25


class LiveSessionLike(Protocol):
    """What this door uses of handler/live_session.py's LiveSession (its SessionFrame: `image`,
    `audio_48k_int16`, `speech_samples`)."""

    id: str
    width: int
    height: int
    fps: float
    output_sample_rate: int
    ended: asyncio.Event
    end_reason: str | None

    @property
    def queued_seconds(self) -> float: ...

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None: ...

    def interrupt(self) -> None: ...

    async def next_output(self, paced: bool = True) -> Any: ...

    async def end(self, reason: str) -> None: ...


class UtteranceTracker:
    """When each utterance the agent sent has been shown in full.

    The agent ends an utterance (AudioSegmentEnd) as soon as it has *sent* it, seconds before it
    is shown; AvatarRunner reports playback finished when the generator yields the end, so the
    generator holds each end back until as many seconds of speech have been shown as were received
    up to it, or, for the last one, until the session has nothing queued (it drops long silences
    and what overflows its queue, so fewer seconds may be shown than were sent). The counts start
    again at an interruption.
    """

    def __init__(self, frame_seconds: float) -> None:
        self._frame_seconds = frame_seconds
        self.clear()

    def clear(self) -> None:
        self._received = 0.0
        self._shown = 0.0
        self._silent_frames = 0
        #: seconds received when each utterance still to finish ended
        self._ends: collections.deque[float] = collections.deque()

    def received(self, seconds: float) -> None:
        self._received += seconds
        self._silent_frames = 0

    def input_ended(self) -> None:
        """The agent ended an utterance; one that brought no speech (the tail of one it cleared) is no utterance."""
        last = self._ends[-1] if self._ends else self._shown
        if self._received > last:
            self._ends.append(self._received)
            self._silent_frames = 0

    def shown(self, speech_seconds: float, nothing_queued: bool) -> bool:
        """A frame carrying `speech_seconds` of speech went out; True when it finished an utterance
        (the caller then yields AudioSegmentEnd)."""
        if speech_seconds > 0:
            self._shown += speech_seconds
            self._silent_frames = 0
        else:
            self._silent_frames += 1
        if not self._ends:
            return False
        # half a frame of slack: the resamplers' few samples of delay
        done = self._shown >= self._ends[0] - self._frame_seconds / 2
        drained = speech_seconds <= 0 and nothing_queued and len(self._ends) == 1
        if done or drained or self._silent_frames >= FINISH_AFTER_SILENT_FRAMES:
            self._shown = max(self._shown, self._ends.popleft())
            self._silent_frames = 0
            return True
        return False


class SessionVideoGenerator(VideoGenerator):
    """A live session behind livekit's VideoGenerator: agent audio in, RGBA frames and 48 kHz speech out.

    Every frame is yielded as an rtc.VideoFrame; a frame that carries speech is followed by its
    rtc.AudioFrame (idle frames carry none, so AvatarRunner's playback position counts the
    agent's speech only), and a frame that completes an utterance by AudioSegmentEnd. Frames are
    taken unpaced: AvatarRunner's synchronizer paces them, its bounded queues holding us back.
    """

    def __init__(self, session: LiveSessionLike) -> None:
        self._session = session
        self._utterances = UtteranceTracker(1.0 / session.fps)
        self._av_sync: rtc.AVSynchronizer | None = None
        # bumped by each interruption: a frame rendered before it carries none of the dropped speech
        self._epoch = 0
        self.frames_out = 0
        self.utterances_finished = 0
        self.interruptions = 0

    def attach(self, av_sync: rtc.AVSynchronizer) -> None:
        """The runner's synchronizer, whose queued frames an interruption drops too."""
        self._av_sync = av_sync

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            self._utterances.input_ended()
            return
        pcm = np.frombuffer(frame.data, dtype=np.int16)
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        self._session.push_audio(pcm, frame.sample_rate)
        self._utterances.received(frame.samples_per_channel / frame.sample_rate)

    async def clear_buffer(self) -> None:
        self._epoch += 1
        self.interruptions += 1
        self._session.interrupt()
        self._utterances.clear()
        if self._av_sync is not None:
            # the ~100 ms the synchronizer holds would otherwise still show the dropped speech
            await self._av_sync.clear_queue()

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        session = self._session
        rate = session.output_sample_rate
        while True:
            epoch = self._epoch
            output = await session.next_output(paced=False)
            if output is None:
                return
            yield video_frame(output.image)
            self.frames_out += 1
            speech = output.speech_samples if epoch == self._epoch else 0
            if speech:
                yield audio_frame(output.audio_48k_int16, rate)
            if self._utterances.shown(speech / rate, session.queued_seconds <= 0):
                self.utterances_finished += 1
                yield AudioSegmentEnd()


def video_frame(image: np.ndarray) -> rtc.VideoFrame:
    """An RGB uint8 frame as the RGBA rtc.VideoFrame a VideoSource takes."""
    rgba = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2RGBA)
    return rtc.VideoFrame(rgba.shape[1], rgba.shape[0], rtc.VideoBufferType.RGBA, rgba.tobytes())


def audio_frame(samples: np.ndarray, sample_rate: int) -> rtc.AudioFrame:
    """A frame's speech (int16 mono) as an rtc.AudioFrame."""
    pcm = np.ascontiguousarray(samples, dtype=np.int16)
    return rtc.AudioFrame(pcm.tobytes(), sample_rate, 1, len(pcm))


@dataclasses.dataclass(frozen=True)
class RoomOutcome:
    """How a session in a room went: the live job's result (handler/livekit_job.py)."""

    session_id: str
    agent_identity: str | None
    end_reason: str
    session_seconds: float
    num_frames: int
    utterances: int
    interruptions: int
    fps: float
    width: int
    height: int


async def hold_room_session(
    request: LiveJobRequest, sessions: SessionOpener, limits: LiveJobLimits, stop: asyncio.Event,
) -> RoomOutcome:
    """Join the room, open the session, serve it until it ends; always leaves the room."""
    room = await join_room(request.target, limits.connect_seconds)
    try:
        session = await sessions.open(request.session_fields)
        return await serve_session(room, session, request.target.agent_identity, limits, stop)
    finally:
        await room.disconnect()


async def join_room(target: RoomTarget, timeout_seconds: float) -> rtc.Room:
    """The room, joined with the avatar's token by the deadline; else FETCH_FAILED (never the token)."""
    room = rtc.Room()
    # The avatar hears the agent through data streams: it subscribes to no track.
    options = rtc.RoomOptions(auto_subscribe=False, connect_timeout=timeout_seconds)
    try:
        # the SDK's own timeout covers the signal connection; this one the whole join
        await asyncio.wait_for(room.connect(target.url, target.token, options), timeout_seconds + 1.0)
    except (TimeoutError, rtc.ConnectError) as error:
        await room.disconnect()
        # never the SDK's message: it can quote the URL it built, token and all
        why = "did not answer in time" if isinstance(error, TimeoutError) else "refused or failed the connection"
        raise JobError(ErrorCode.FETCH_FAILED, (
            f"{URL_FIELD}: the LiveKit server at {shown_value(target.host)} {why} (joining room "
            f"{shown_value(target.room)} within {timeout_seconds:g} s); check the URL, that the server is up, and "
            "that the token was made with that server's API key and secret.")) from None
    except BaseException:
        await room.disconnect()
        raise
    return room


async def serve_session(
    room: Any, session: LiveSessionLike, agent_identity: str | None, limits: LiveJobLimits, stop: asyncio.Event,
) -> RoomOutcome:
    """Serve `session` in the joined `room` as the agent's avatar until one of its ends; always ends the session.

    Ends: the room disconnects (it was deleted, or the avatar removed), the agent leaves, the
    session ends itself (idle timeout, its own limit), `limits.max_session_seconds`, `stop`, or no
    agent arrives within `limits.agent_join_seconds`.
    """
    started = time.monotonic()
    generator = SessionVideoGenerator(session)
    reason = "the avatar stopped"
    ends = _RoomEnds(room)
    runner: AvatarRunner | None = None
    try:
        agent = await _agent_in_room(room, agent_identity, limits.agent_join_seconds, ends, stop)
        if agent is None:
            reason = ends.reason or ("the job was stopped" if stop.is_set() else
                                     f"no agent joined the room within {limits.agent_join_seconds:g} s")
        else:
            agent_identity = agent
            ends.watch_agent(agent)
            runner = AvatarRunner(
                room, video_gen=generator,
                audio_recv=DataStreamAudioReceiver(room, sender_identity=agent, frame_size_ms=RECEIVED_PIECE_MS),
                options=AvatarOptions(
                    video_width=session.width, video_height=session.height, video_fps=session.fps,
                    audio_sample_rate=session.output_sample_rate, audio_channels=1,
                ),
            )
            generator.attach(runner.av_sync)
            try:
                # its receiver looks for the agent again: bounded, in case it left just now
                await asyncio.wait_for(runner.start(), limits.agent_join_seconds)
            except TimeoutError:
                reason = ends.reason or "the agent left before the avatar could start"
            else:
                reason = await _first_end(ends, session, stop, runner, limits.max_session_seconds)
    finally:
        ends.close()
        if runner is not None:
            await runner.aclose()
        await session.end(reason)
    return RoomOutcome(
        session_id=str(session.id), agent_identity=agent_identity, end_reason=reason,
        session_seconds=time.monotonic() - started, num_frames=generator.frames_out,
        utterances=generator.utterances_finished, interruptions=generator.interruptions, fps=float(session.fps),
        width=int(session.width), height=int(session.height),
    )


class _RoomEnds:
    """The room's events that end the session: it disconnects, the agent leaves."""

    def __init__(self, room: Any) -> None:
        self._room = room
        self.event = asyncio.Event()
        self.reason: str | None = None
        self._agent: str | None = None
        self._handlers: list[tuple[str, Callable[..., None]]] = [
            ("disconnected", self._on_disconnected), ("participant_disconnected", self._on_participant_left),
        ]
        for name, handler in self._handlers:
            room.on(name, handler)

    def watch_agent(self, identity: str) -> None:
        self._agent = identity

    def _end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.event.set()

    def _on_disconnected(self, *_: Any) -> None:
        self._end("the room ended or removed the avatar")

    def _on_participant_left(self, participant: Any) -> None:
        if self._agent is not None and getattr(participant, "identity", None) == self._agent:
            self._end("the agent left the room")

    def close(self) -> None:
        for name, handler in self._handlers:
            self._room.off(name, handler)


async def _agent_in_room(
    room: Any, identity: str | None, timeout_seconds: float, ends: _RoomEnds, stop: asyncio.Event,
) -> str | None:
    """The identity of the agent whose speech the avatar shows, once it is in the room; None at another end first."""
    kind = None if identity else rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    arrival = asyncio.ensure_future(wait_for_participant(room, identity=identity, kind=kind))
    others = [asyncio.ensure_future(ends.event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        done, _ = await asyncio.wait([arrival, *others], timeout=timeout_seconds, return_when=asyncio.FIRST_COMPLETED)
        if arrival in done and arrival.exception() is None:
            return str(arrival.result().identity)
        return None
    finally:
        for task in (arrival, *others):
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(arrival, *others, return_exceptions=True)


async def _first_end(
    ends: _RoomEnds, session: LiveSessionLike, stop: asyncio.Event, runner: AvatarRunner, max_seconds: float,
) -> str:
    """Why the session ends: whichever of its ends comes first."""
    streaming = asyncio.ensure_future(runner.wait_for_complete())

    def stream_ended() -> str:
        if streaming.exception() is not None:
            log.error("the avatar's media stream failed", exc_info=streaming.exception())
            return "the avatar's media stream failed (the worker's log has the details)"
        return session.end_reason or "the avatar's media stream ended"

    waits = {
        asyncio.ensure_future(ends.event.wait()): lambda: ends.reason or "the room ended",
        asyncio.ensure_future(session.ended.wait()): lambda: session.end_reason or "the session ended",
        asyncio.ensure_future(stop.wait()): lambda: "the job was stopped (a cancel, or the worker shutting down)",
        streaming: stream_ended,
    }
    try:
        done, _ = await asyncio.wait(waits, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            return f"the session reached its maximum length of {max_seconds:g} s"
        first = next(task for task in waits if task in done)
        return waits[first]()
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
