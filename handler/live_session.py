"""Live sessions: speech in as it is spoken, 25 fps frames and the speech they show out (docs/CONTRACT.md).

The engine every door shares (WebRTC: handler/webrtc_door.py; LiveKit: its own door). A door opens a
session with a job's portrait fields, pushes the speech it receives, and takes `SessionFrame`s:

    sessions = LiveSessions(worker, settings)        # one per worker
    session = await sessions.open({"avatar_id": "astronaut", "resolution": "512*512"})
    session.push_audio(pcm, sample_rate)             # mono int16 or float32, any rate, any piece size
    frame = await session.next_output(paced=True)    # SessionFrame, or None once the session ended
    session.interrupt()                              # drop the queued speech: the next frame is silent
    await session.end("the peer left")               # or: an idle timeout, the maximum length, close_all

Each frame carries the 48 kHz speech it shows (`audio_48k_int16`, 1/fps of it), so a transport that
sends both together keeps picture and sound in sync. The generator (model/live.py) is touched only
by the session's own render thread: pushes and interruptions wait in a small inbox the thread reads
before each frame, so rendering never blocks the event loop and a door may push from any thread.

Speech that arrives while nothing is said (a microphone's silence) is not queued: a piece quieter
than SPEECH_RMS_FLOOR, more than HANGOVER_SECONDS after the last loud one, is dropped (the last
PREROLL_SECONDS of it are kept and sent ahead of the next loud piece, so a soft onset is not cut).
Pauses inside speech (and speech pushed faster than it is spoken, a TTS's) are kept whole. The
idle timeout counts from the last loud piece.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from handler.errors import ErrorCode, JobError, contract_error
from handler.job import Worker
from handler.live_audio import StreamingResampler, as_float_mono, to_int16
from handler.settings import WorkerSettings
from model.live import LiveFrame, LiveGenerator

log = logging.getLogger(__name__)

#: the rate of every frame's speech (`SessionFrame.audio_48k_int16`): WebRTC's Opus and LiveKit's own
OUTPUT_SAMPLE_RATE = 48_000
#: the rate the generator takes (model/live.py)
GENERATOR_SAMPLE_RATE = 16_000
# A talk spurt starts being shown once this much is queued (or its first frame and look-ahead, if
# more): 20 ms network pieces that arrive unevenly then never leave the generator short of speech.
JITTER_SECONDS = 0.08
# ...or once no piece came for this long (a spurt shorter than the buffer, or its end).
PUSH_GAP_SECONDS = 0.06
# Quieter than this (-50 dBFS RMS) a piece is silence: a microphone's hiss, not speech.
SPEECH_RMS_FLOOR = 10 ** (-50 / 20)
# Silence is queued for this long after the last loud piece: pauses between words stay in the speech.
HANGOVER_SECONDS = 0.5
# Of the silence dropped before speech, this much goes ahead of it: soft onsets start below the floor.
PREROLL_SECONDS = 0.1
# Speech queued ahead of what is shown is bounded (memory: 60 s is ~15 MB); past it pieces are dropped.
MAX_QUEUED_SECONDS = 60.0
# A paced session (its speech arrives as it is spoken) whose queue holds this much more than the jitter
# buffer has fallen behind: it drops the oldest waiting speech, back to the jitter buffer.
CATCH_UP_SECONDS = 0.25
# The generator is handed its next frame's speech and look-ahead, plus this (a piece's worth).
FEED_MARGIN_SECONDS = 0.02
# A paced session more than this behind its clock (its consumer stalled) restarts its clock instead
# of sending the missed frames in a burst.
MAX_LAG_SECONDS = 0.2
# How often the watchdog looks at the idle timeout and the maximum length, at the most.
WATCH_SECONDS = 1.0
# What a client refused because the worker is full is told to wait before it tries again.
SESSION_LIMIT_RETRY_SECONDS = 30


class SessionLimitError(JobError):
    """SESSION_LIMIT: the worker holds all the sessions it may; `retry_after` is a hint in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(ErrorCode.SESSION_LIMIT, message)
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class SessionFrame:
    """One frame of a live session and the speech it shows.

    `index` counts from 0; `image` is RGB uint8 (height, width, 3); `audio_48k_int16` is mono int16
    at OUTPUT_SAMPLE_RATE, exactly 48000 / fps samples (1920 at 25 fps), of which the first
    `speech_samples` are queued speech and the rest silence; `speaking` is true while a talk spurt
    is shown (a door reports "playback finished" when it turns false).
    """

    index: int
    image: np.ndarray
    audio_48k_int16: np.ndarray
    speaking: bool
    speech_samples: int = 0


class LiveSession:
    """One live session: a generator, its speech queues, its clock and its limits. Made by LiveSessions.open."""

    def __init__(
        self, generator: LiveGenerator, settings: WorkerSettings, on_end: Callable[[LiveSession], None],
    ) -> None:
        self.id = secrets.token_urlsafe(18)
        self.width, self.height, self.fps = generator.width, generator.height, float(generator.fps)
        self.output_sample_rate = OUTPUT_SAMPLE_RATE
        self.ended = asyncio.Event()
        self.end_reason: str | None = None
        self._closing: asyncio.Task[None] | None = None
        self._generator = generator
        self._on_end = on_end
        self._max_seconds = settings.live_max_session_seconds
        self._idle_seconds = settings.live_idle_timeout_seconds
        self._samples_per_frame = generator.samples_per_frame
        self._out_per_frame = round(OUTPUT_SAMPLE_RATE / self.fps)
        # a frame is exact once its own speech and its look-ahead are queued: the buffer holds at least that
        self._jitter_seconds = max(JITTER_SECONDS, generator.look_ahead_seconds + 1 / self.fps + FEED_MARGIN_SECONDS)
        self._out_per_generator_sample = OUTPUT_SAMPLE_RATE // GENERATOR_SAMPLE_RATE
        # the inbox, shared with the pushing thread(s) under _lock
        self._lock = threading.Lock()
        self._inbox: list[tuple[np.ndarray, np.ndarray]] = []
        self._interrupted = False
        self._resamplers: dict[int, tuple[StreamingResampler, StreamingResampler]] = {}
        self._preroll: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._queued_samples = 0  # 16 kHz speech pushed and not yet shown (inbox + generator)
        self.started_at = time.monotonic()
        self._last_loud = -float("inf")  # the gate's: silence before the first speech is not queued
        self._idle_since = self.started_at  # the idle timeout's: from the start, then from each loud piece
        self._last_push = self.started_at
        self._dropped_overflow = False
        # the render thread's own state: speech not yet handed to the generator, each piece with its 48 kHz twin
        self._backlog: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque()
        self._backlog_samples = 0
        #: speech a paced session dropped to catch up with its clock (`_catch_up`)
        self.dropped_seconds = 0.0
        self._outgoing: collections.deque[np.ndarray] = collections.deque()  # 48 kHz speech, in step with the queue
        self._outgoing_head = 0  # samples of _outgoing[0] already sent
        self._showing = False
        self._index = 0
        self._clock_start: float | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-render")
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    # --- what a door calls -------------------------------------------------------------------------

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Queue speech: mono `pcm` (int16, or float in [-1, 1]) at `sample_rate`, any length.

        Never blocks on rendering; safe from any thread. Raises ValueError for a piece that is not
        mono PCM or a rate that is not a positive whole number.
        """
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 0 < sample_rate <= 384_000:
            raise ValueError(f"sample_rate must be a whole number of Hz between 1 and 384000, not {sample_rate!r}")
        samples = as_float_mono(pcm)
        if self.ended.is_set() or not len(samples):
            return
        now = time.monotonic()
        loud = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) >= SPEECH_RMS_FLOOR
        with self._lock:
            self._last_push = now
            if loud:
                self._last_loud = self._idle_since = now
                for rate, held in self._preroll:
                    self._queue(held, rate)
                self._preroll.clear()
            elif now - self._last_loud > HANGOVER_SECONDS:
                self._hold_preroll(samples, sample_rate)
                return
            self._queue(samples, sample_rate)

    def interrupt(self) -> None:
        """Drop the speech queued and not yet shown; the next frame is silent and its mouth closing."""
        with self._lock:
            self._inbox.clear()
            self._preroll.clear()
            self._interrupted = True
            self._queued_samples = 0
            for to_generator, to_output in self._resamplers.values():
                to_generator.reset()
                to_output.reset()

    @property
    def queued_seconds(self) -> float:
        """Speech pushed and not yet shown."""
        return self._queued_samples / GENERATOR_SAMPLE_RATE

    async def next_output(self, paced: bool = True) -> SessionFrame | None:
        """The next frame and the speech it shows; None once the session has ended (and released
        everything: its render thread is gone when None comes back).

        `paced`: the frame leaves at its time on the monotonic clock (index / fps after the first),
        as a WebRTC track needs, and speech that waits past the jitter buffer by CATCH_UP_SECONDS
        (the consumer or the network stalled) is dropped, oldest first; otherwise at once, every
        piece of speech kept (a consumer that paces itself, LiveKit's AvatarRunner).
        """
        if not self.ended.is_set() and paced:
            await self._wait_for_due_time()
        if not self.ended.is_set():
            try:
                return await asyncio.get_running_loop().run_in_executor(self._executor, self._render_next, paced)
            except RuntimeError:  # the executor was shut down: the session ended meanwhile
                pass
        await self.end("ended")  # waits for the ending in progress; its reason stays
        return None

    async def end(self, reason: str) -> None:
        """End the session; the first reason given stays. Every call returns once the session has
        released everything: its generator closed after any frame in progress, its render thread and
        watchdog gone, its place in LiveSessions free."""
        if self._closing is None:
            self.end_reason = reason
            self.ended.set()
            # a task of its own: a caller that is cancelled (its door's, the watchdog) cannot cut it short
            self._closing = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._watchdog.cancel()
        closed = self._executor.submit(self._generator.close)
        self._executor.shutdown(wait=False)
        try:
            await asyncio.wrap_future(closed)
        except Exception:  # noqa: BLE001 - a generator that fails to close must not keep the session open
            log.exception("live session %s: its generator failed to close", self.id[:6])
        await asyncio.to_thread(self._executor.shutdown, True)
        with self._lock:
            self._inbox.clear()
            self._preroll.clear()
        self._outgoing.clear()
        self._backlog.clear()
        log.info("live session %s ended after %.1f s, %d frames: %s",
                 self.id[:6], time.monotonic() - self.started_at, self._index, self.end_reason)
        self._on_end(self)

    # --- the inbox (called under _lock) -------------------------------------------------------------

    def _queue(self, samples: np.ndarray, rate: int) -> None:
        to_generator, to_output = self._resamplers_for(rate)
        speech, outgoing = to_generator.process(samples), to_output.process(samples)
        if (self._queued_samples + len(speech)) / GENERATOR_SAMPLE_RATE > MAX_QUEUED_SECONDS:
            if not self._dropped_overflow:
                log.warning("live session %s: more than %g s of speech queued; dropping what comes past it",
                            self.id[:6], MAX_QUEUED_SECONDS)
                self._dropped_overflow = True
            return
        self._queued_samples += len(speech)
        self._inbox.append((speech, outgoing))

    def _hold_preroll(self, samples: np.ndarray, rate: int) -> None:
        self._preroll.append((rate, samples))
        while sum(len(held) / held_rate for held_rate, held in self._preroll) > PREROLL_SECONDS:
            self._preroll.popleft()

    def _resamplers_for(self, rate: int) -> tuple[StreamingResampler, StreamingResampler]:
        pair = self._resamplers.get(rate)
        if pair is None:
            # a door that changes rate mid-stream starts afresh at the new one
            self._resamplers.clear()
            pair = (StreamingResampler(rate, GENERATOR_SAMPLE_RATE), StreamingResampler(rate, OUTPUT_SAMPLE_RATE))
            self._resamplers[rate] = pair
        return pair

    # --- the render thread ---------------------------------------------------------------------------

    def _render_next(self, paced: bool) -> SessionFrame:
        with self._lock:
            pieces, self._inbox = self._inbox, []
            interrupted, self._interrupted = self._interrupted, False
            since_push = time.monotonic() - self._last_push
        generator = self._generator
        if interrupted:
            generator.interrupt()
            self._backlog.clear()
            self._backlog_samples = 0
            self._outgoing.clear()
            self._outgoing_head = 0
            self._showing = False
        for speech, outgoing in pieces:
            self._backlog.append((speech, outgoing))
            self._backlog_samples += len(speech)
        if paced:
            self._catch_up(generator.queued_seconds)
        self._feed(generator)
        queued = generator.queued_seconds + self._backlog_samples / GENERATOR_SAMPLE_RATE
        if not self._showing and queued > 0 and (queued >= self._jitter_seconds or since_push >= PUSH_GAP_SECONDS):
            self._showing = True
        frame: LiveFrame
        shown = 0
        if self._showing:
            before = generator.queued_seconds
            frame = generator.next_frame(speak=True)
            shown = min(round((before - generator.queued_seconds) * GENERATOR_SAMPLE_RATE), self._samples_per_frame)
            if not frame.speaking or (generator.queued_seconds <= 0 and not self._backlog):
                self._showing = False  # the spurt ran dry: buffer the next one again
        else:
            frame = generator.next_frame(speak=False)
        with self._lock:
            self._queued_samples = max(0, self._queued_samples - shown)
        audio, carried = self._take_outgoing(shown * self._out_per_generator_sample)
        index = self._index
        self._index += 1
        return SessionFrame(index, frame.image, audio, frame.speaking, carried)

    def _feed(self, generator: LiveGenerator) -> None:
        """Hand the generator what its next frame shows and reads ahead; the rest waits in the backlog,
        where a paced session can still drop it (`_catch_up`)."""
        wanted = self._samples_per_frame + round((generator.look_ahead_seconds + FEED_MARGIN_SECONDS)
                                                 * GENERATOR_SAMPLE_RATE)
        while self._backlog and generator.queued_seconds * GENERATOR_SAMPLE_RATE < wanted:
            speech, outgoing = self._backlog.popleft()
            self._backlog_samples -= len(speech)
            generator.push_speech(speech)
            self._outgoing.append(outgoing)

    def _catch_up(self, in_generator: float) -> None:
        """Speech that arrives as it is spoken and waits more than CATCH_UP_SECONDS past the jitter
        buffer has been delayed (a stall, pieces bunched up by the network): its oldest waiting part is
        dropped, back down to the jitter buffer, so the delay does not grow for the rest of the session."""
        backlog = self._backlog_samples / GENERATOR_SAMPLE_RATE
        if in_generator + backlog <= self._jitter_seconds + CATCH_UP_SECONDS:
            return
        dropped = 0
        while self._backlog and in_generator + (self._backlog_samples - len(self._backlog[0][0])) / \
                GENERATOR_SAMPLE_RATE >= self._jitter_seconds:
            speech, _ = self._backlog.popleft()
            self._backlog_samples -= len(speech)
            dropped += len(speech)
        with self._lock:
            self._queued_samples = max(0, self._queued_samples - dropped)
        self.dropped_seconds += dropped / GENERATOR_SAMPLE_RATE
        log.info("live session %s: %.2f s of speech was waiting past its jitter buffer; %.2f s dropped to catch up",
                 self.id[:6], in_generator + backlog, dropped / GENERATOR_SAMPLE_RATE)

    def _take_outgoing(self, count: int) -> tuple[np.ndarray, int]:
        """The next `count` samples of outgoing speech, padded with silence to one frame's worth, and
        how many of them are speech."""
        audio = np.zeros(self._out_per_frame, dtype=np.int16)
        filled = 0
        count = min(count, self._out_per_frame)
        while filled < count and self._outgoing:
            head = self._outgoing[0]
            take = min(count - filled, len(head) - self._outgoing_head)
            audio[filled:filled + take] = to_int16(head[self._outgoing_head:self._outgoing_head + take])
            filled += take
            self._outgoing_head += take
            if self._outgoing_head >= len(head):
                self._outgoing.popleft()
                self._outgoing_head = 0
        return audio, filled

    # --- the clock and the limits -------------------------------------------------------------------

    async def _wait_for_due_time(self) -> None:
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now - self._index / self.fps
        due = self._clock_start + self._index / self.fps
        if now - due > MAX_LAG_SECONDS:
            self._clock_start = now - self._index / self.fps
            return
        if due > now:
            try:
                await asyncio.wait_for(self.ended.wait(), due - now)
            except TimeoutError:
                pass

    async def _watch(self) -> None:
        while not self.ended.is_set():
            now = time.monotonic()
            length_left = self.started_at + self._max_seconds - now
            idle_left = self._idle_since + self._idle_seconds - now
            if length_left <= 0:
                await self.end(f"it reached its maximum length, LIVE_MAX_SESSION_SECONDS={self._max_seconds:g}")
                return
            if idle_left <= 0:
                await self.end(f"no speech arrived for LIVE_IDLE_TIMEOUT_SECONDS={self._idle_seconds:g}")
                return
            try:
                await asyncio.wait_for(self.ended.wait(), min(WATCH_SECONDS, length_left, idle_left))
            except TimeoutError:
                pass


class LiveSessions:
    """The live sessions of one worker: opened within its capacity, found by id, all closed at shutdown."""

    def __init__(self, worker: Worker, settings: WorkerSettings) -> None:
        self._worker = worker
        self._settings = settings
        self._sessions: dict[str, LiveSession] = {}
        self._opening = 0
        self._closing = False

    @property
    def capacity(self) -> int:
        """LIVE_MAX_SESSIONS, else the backend's declared `live.max_sessions` (0 without a backend)."""
        if self._settings.live_max_sessions is not None:
            return self._settings.live_max_sessions
        backend = self._worker.backend
        return backend.declaration.live.max_sessions if backend is not None else 0

    @property
    def active(self) -> int:
        """Sessions open now (those still preparing their portrait included)."""
        return len(self._sessions) + self._opening

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def check_can_open(self) -> None:
        """Refuse, before any media work, what no portrait can fix: a backend that cannot go live
        (LIVE_UNSUPPORTED), a worker that holds all its sessions (SessionLimitError)."""
        backend = self._worker.loaded_backend
        live = backend.declaration.live
        if not live.can_go_live:
            raise JobError(ErrorCode.LIVE_UNSUPPORTED, (
                f"the {backend.name} backend cannot render live sessions: {live.why_not}. Render the speech as a "
                "job (POST /generate), or run a worker whose backend can go live."))
        if self._closing:
            raise JobError(ErrorCode.INTERNAL, "the worker is shutting down; open the session on another worker.")
        if self.active >= self.capacity:
            limit = ("LIVE_MAX_SESSIONS" if self._settings.live_max_sessions is not None
                     else "the backend's live.max_sessions; raise it with LIVE_MAX_SESSIONS")
            raise SessionLimitError(
                f"this worker holds {self.active} live sessions, as many as it may ({self.capacity}, {limit}); "
                f"retry in {SESSION_LIMIT_RETRY_SECONDS} s, or on another worker.", SESSION_LIMIT_RETRY_SECONDS)

    async def open(self, fields: Mapping[str, Any]) -> LiveSession:
        """A new session for the portrait `fields` (image_file / image_url / avatar_id, resolution,
        seed, mode: as a job's). Raises JobError with the contract's code: LIVE_UNSUPPORTED and
        SESSION_LIMIT before anything else, then the fields' own errors (INVALID_INPUT,
        FETCH_FAILED, NO_FACE, ...)."""
        self.check_can_open()
        options = self._worker.live_options(fields)  # every field judged before any media work
        self._opening += 1
        try:
            portrait = await asyncio.to_thread(self._worker.prepare_live_portrait, fields)
            backend = self._worker.loaded_backend
            try:
                generator = await asyncio.to_thread(backend.open_live, portrait, options)
            except Exception as error:  # noqa: BLE001 - translated to the contract's error, else re-raised
                failure = contract_error(backend.translate_error(error))
                if failure is None:
                    raise
                raise failure from None
        finally:
            self._opening -= 1
        session = LiveSession(generator, self._settings, self._forget)
        self._sessions[session.id] = session
        if self._closing:  # the worker began shutting down while the portrait was prepared
            await session.end("the worker is shutting down")
            raise JobError(ErrorCode.INTERNAL, "the worker is shutting down; open the session on another worker.")
        log.info("live session %s opened: %dx%d at %g fps (%d of %d)",
                 session.id[:6], session.width, session.height, session.fps, len(self._sessions), self.capacity)
        return session

    async def close_all(self, reason: str) -> None:
        """End every session (SIGTERM, the server's shutdown); no session opens after it."""
        self._closing = True
        await asyncio.gather(*(session.end(reason) for session in list(self._sessions.values())))

    def _forget(self, session: LiveSession) -> None:
        self._sessions.pop(session.id, None)


async def measure_latency(session: LiveSession, speech: np.ndarray, piece_seconds: float = 0.02) -> dict[str, float]:
    """A benchmark (no test asserts on it): push `speech` (float32, 48 kHz) in real time in pieces
    of `piece_seconds`, take paced frames, and report how long each speech sample waited between
    entering `push_audio` and leaving `next_output` in the frame that shows it (its median, 95th
    percentile and maximum in ms, over the frames that carried speech), and the frames' rate.

    A frame's speech is the queue's head (SessionFrame.speech_samples), so counting the samples the
    frames carried finds each frame's first sample among those pushed. For that count to hold, no
    piece may be dropped as silence: a faint noise floor (-45 dBFS, above SPEECH_RMS_FLOOR) is added.
    """
    piece = round(OUTPUT_SAMPLE_RATE * piece_seconds)
    floor = np.random.default_rng(0).normal(0.0, 10 ** (-45 / 20), len(speech)).astype(np.float32)
    speech = np.clip(speech + floor, -1.0, 1.0)
    pushed_at: list[tuple[int, float]] = []  # (first sample of a piece, when it was pushed)

    async def feed() -> None:
        start = time.monotonic()
        for number, first in enumerate(range(0, len(speech), piece)):
            await asyncio.sleep(max(0.0, start + number * piece_seconds - time.monotonic()))
            pushed_at.append((first, time.monotonic()))
            session.push_audio(speech[first:first + piece], OUTPUT_SAMPLE_RATE)

    feeder = asyncio.get_running_loop().create_task(feed())
    delays: list[float] = []
    shown = 0
    frames = 0
    began = time.monotonic()
    frames_needed = round(len(speech) / OUTPUT_SAMPLE_RATE * session.fps) + round(session.fps)
    for _ in range(frames_needed):
        frame = await session.next_output(paced=True)
        if frame is None:
            break
        frames += 1
        left = time.monotonic()
        if frame.speech_samples:
            entered = max((at for first, at in pushed_at if first <= shown), default=left)
            delays.append(left - entered)
            shown += frame.speech_samples
    await feeder
    elapsed = time.monotonic() - began
    figures = np.array(delays) * 1000 if delays else np.zeros(1)
    return {"median_ms": float(np.median(figures)), "p95_ms": float(np.percentile(figures, 95)),
            "max_ms": float(figures.max()), "fps": frames / elapsed, "speech_frames": float(len(delays))}


async def _benchmark(portrait: str, speech_path: str, resolution: str) -> None:
    import base64
    import json

    import soundfile

    from handler.startup import start_worker

    worker = start_worker()
    sessions = LiveSessions(worker, worker.settings)
    with open(portrait, "rb") as file:
        session = await sessions.open({"image_file": base64.b64encode(file.read()).decode(), "resolution": resolution})
    speech, rate = soundfile.read(speech_path, dtype="float32", always_2d=True)
    speech = StreamingResampler(rate, OUTPUT_SAMPLE_RATE).process(speech.mean(axis=1))
    figures = await measure_latency(session, speech)
    # frames rendered as fast as asked, speech queued ahead: what one session costs the render thread
    session.push_audio(speech, OUTPUT_SAMPLE_RATE)
    began, count = time.perf_counter(), 100
    for _ in range(count):
        await session.next_output(paced=False)
    figures["render_ms_per_frame"] = (time.perf_counter() - began) / count * 1000
    await session.end("the benchmark is over")
    print(json.dumps({"size": f"{session.width}x{session.height}", **{k: round(v, 2) for k, v in figures.items()}}))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m handler.live_session", description=(
        "Print a live session's latency (speech sample in -> the frame that shows it out, paced at fps) and its "
        "render time per frame, on the backend MODEL_BACKEND names."))
    parser.add_argument("--portrait", default="assets/portrait.jpg")
    parser.add_argument("--speech", default="assets/speech.wav")
    parser.add_argument("--resolution", default="512*512")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_benchmark(arguments.portrait, arguments.speech, arguments.resolution))
