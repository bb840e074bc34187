"""lite in a live session: speech queued as it arrives, one frame rendered per call, for as long as asked.

The mouth follows the speech the frames carry (the stream of every frame's speech, silence included)
through `CausalMouth`, hop by hop; each frame reads LEAD_HOPS hops past its centre so that the jaw,
whose envelope takes about that long to open, opens as the syllable is heard rather than after it.
Everything a frame reads past its own speech is the queue's head and is never kept in the state:
the state moves only over speech that was shown, so how the speech was cut into pushes changes nothing.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from model.base import SPEECH_SAMPLE_RATE
from model.lite.motion import BlinkClock, HeadMotion, seeded_generators
from model.lite.renderer import FramePose, FrameRenderer, PortraitRig
from model.lite.speech_features import CLOSED_OPENING, HOP, WINDOW, CausalMouth, MouthState, hop_analysis
from model.live import LiveFrame, LiveGenerator

# hops a frame's mouth is read ahead of its centre: about the envelope's attack time (35 ms)
LEAD_HOPS = 4
# after an interrupt the jaw may open at most this share of the frame before's, frame after frame,
# so the mouth is shut within a few frames instead of the release's tenth of a second
INTERRUPT_CLOSE_PER_FRAME = 0.4


class SpeechQueue:
    """Speech not yet shown, in the pieces it was pushed in; its memory is that speech and nothing more."""

    def __init__(self) -> None:
        self._pieces: collections.deque[np.ndarray] = collections.deque()
        self._head = 0  # samples of the first piece already taken
        self.size = 0

    def push(self, samples: np.ndarray) -> None:
        if len(samples):
            self._pieces.append(samples)
            self.size += len(samples)

    def take(self, count: int) -> np.ndarray:
        """The next `count` samples (zeros past the end), taken off the queue."""
        out = self.peek(count)
        taken = min(count, self.size)
        self.size -= taken
        while taken:
            left = len(self._pieces[0]) - self._head
            if taken < left:
                self._head += taken
                break
            taken -= left
            self._pieces.popleft()
            self._head = 0
        return out

    def peek(self, count: int) -> np.ndarray:
        """The next `count` samples, zeros past the end, leaving the queue as it is."""
        out = np.zeros(count, np.float32)
        filled, head = 0, self._head
        for piece in self._pieces:
            part = piece[head : head + count - filled]
            out[filled : filled + len(part)] = part
            filled += len(part)
            head = 0
            if filled == count:
                break
        return out

    def clear(self) -> None:
        self._pieces.clear()
        self._head = 0
        self.size = 0


class LiteLiveGenerator(LiveGenerator):
    """One portrait, animated frame by frame from speech pushed as it is spoken (model/live.py).

    `push_speech`, `interrupt` and `queued_seconds` may be called from another thread than
    `next_frame` (a transport's receiving loop while frames render in a worker thread).
    """

    def __init__(self, rig: PortraitRig, fps: float, seed: int) -> None:
        self.fps = fps
        self.height, self.width = rig.image.shape[:2]
        frame_samples = self.samples_per_frame
        if frame_samples % (2 * HOP):
            raise ValueError(f"{fps} fps does not put a frame's centre on a {HOP}-sample analysis hop")
        self._hops_per_frame = frame_samples // HOP
        # what a frame reads past its own speech: the window of the hop LEAD_HOPS past its centre
        self._ahead_samples = (LEAD_HOPS - self._hops_per_frame // 2) * HOP + WINDOW // 2
        self.look_ahead_seconds = self._ahead_samples / SPEECH_SAMPLE_RATE

        self._renderer = FrameRenderer(rig)
        blink_rng, head_rng = seeded_generators(seed)
        self._blinks = BlinkClock(fps, blink_rng)
        self._head = HeadMotion(fps, head_rng, rig.head.face_height)
        self._mouth = CausalMouth()
        self._queue = SpeechQueue()
        self._queue_lock = threading.Lock()
        self._frame = 0
        # the shown speech from the first sample a hop not yet taken in reads (hop 0 reads zeros before the start)
        self._history = np.zeros(WINDOW // 2, np.float32)
        self._next_hop = 0
        self._last_opening = 0.0
        self._interrupted = False
        self._close_ceiling: float | None = None

    def push_speech(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(
                f"speech must be mono float samples at 16 kHz in [-1, 1] (a 1-D float array); "
                f"got {samples.dtype} with shape {samples.shape}"
            )
        samples = samples.astype(np.float32)  # a copy: the caller may reuse its buffer
        if not np.isfinite(samples).all():
            raise ValueError("speech samples must be finite numbers in [-1, 1]; this piece holds NaN or infinity")
        with self._queue_lock:
            self._queue.push(samples)

    def interrupt(self) -> None:
        with self._queue_lock:
            self._queue.clear()
            self._interrupted = True

    @property
    def queued_seconds(self) -> float:
        return self._queue.size / SPEECH_SAMPLE_RATE

    def next_frame(self, speak: bool = True) -> LiveFrame:
        speech, ahead = np.zeros(self.samples_per_frame, np.float32), np.zeros(self._ahead_samples, np.float32)
        speaking = False
        with self._queue_lock:
            if self._interrupted:
                self._interrupted = False
                if self._last_opening > 0.0:
                    self._close_ceiling = self._last_opening
            if speak:
                speaking = self._queue.size > 0
                speech = self._queue.take(self.samples_per_frame)
                ahead = self._queue.peek(self._ahead_samples)
        opening, spread = self._mouth_pose(speech, ahead)

        frame = self._frame
        # the nod follows the shown speech only, so that nothing read ahead stays in the state
        shift_x, shift_y, roll = self._head.pose(frame, self._mouth.state.pose()[0])
        pose = FramePose(opening=opening, spread=spread, blink=self._blinks.closure(frame),
                         shift_x=shift_x, shift_y=shift_y, roll=roll)
        image = np.empty((self.height, self.width, 3), np.uint8)
        self._renderer.render(pose, image)
        self._frame += 1
        self._last_opening = opening
        return LiveFrame(image=image, speech=speech, speaking=speaking)

    def _mouth_pose(self, speech: np.ndarray, ahead: np.ndarray) -> tuple[float, float]:
        """Advance the mouth over the hops `speech` completes; read it at the frame's hop through `ahead`."""
        stream_end = (self._frame + 1) * self.samples_per_frame
        last_complete = (stream_end - WINDOW // 2) // HOP
        frame_hop = self._frame * self._hops_per_frame + self._hops_per_frame // 2 + LEAD_HOPS
        samples = np.concatenate([self._history, speech, ahead])
        num_hops = frame_hop - self._next_hop + 1
        assert len(samples) == (num_hops - 1) * HOP + WINDOW, "the look-ahead holds every hop the frame reads"
        windows = samples[HOP * np.arange(num_hops)[:, None] + np.arange(WINDOW)]
        levels, balances = hop_analysis(windows)
        shown = last_complete - self._next_hop + 1
        self._mouth.advance(levels[:shown], balances[:shown])
        state = self._mouth.peek(levels[shown:], balances[shown:])
        self._history = samples[shown * HOP : len(samples) - len(ahead)].copy()
        self._next_hop = last_complete + 1
        if self._close_ceiling is not None:
            state = self._close_after_interrupt(state)
        return state.pose()

    def _close_after_interrupt(self, state: MouthState) -> MouthState:
        ceiling = self._close_ceiling
        assert ceiling is not None
        ceiling *= INTERRUPT_CLOSE_PER_FRAME
        self._close_ceiling = ceiling if ceiling >= CLOSED_OPENING else None
        held = self._mouth.state
        self._mouth.state = MouthState(min(held.opening, ceiling), held.spread)
        return MouthState(min(state.opening, ceiling), state.spread)
