"""A live session's model side: speech pushed as it is spoken, frames taken one by one at the video's rate.

The session (handler/live_session.py) owns the clock and the transports; a backend that can go live
(its declaration's `live`) returns a LiveGenerator from `TalkingHeadBackend.open_live`. The generator
never waits and never reads a clock: each `next_frame` call renders the next frame of the video, 1/fps
later than the one before, and hands back the speech that frame carries, so that picture and sound
leave together and stay in sync whatever the transport does with them.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np


class LiveUnsupportedError(Exception):
    """The backend cannot render a live session; the message says why (its declaration's `live.why_not`)."""


@dataclasses.dataclass(frozen=True)
class LiveFrame:
    """One frame of a live session and the speech it carries.

    `image` is RGB uint8 (height, width, 3). `speech` is float32 mono at 16 kHz, exactly
    `LiveGenerator.samples_per_frame` samples: queued speech, or zeros where there was none.
    `speaking` says whether any queued speech went into it (a transport ends an utterance when it
    turns false after being true).
    """

    image: np.ndarray
    speech: np.ndarray
    speaking: bool


class LiveGenerator(abc.ABC):
    """Turns speech that arrives in pieces into frames, with a bounded look-ahead.

    Speech is queued by `push_speech` (float32 mono 16 kHz in [-1, 1], any length, at any pace);
    `next_frame(speak=True)` consumes one frame's worth from the queue's head (zeros past its end),
    looking at most `look_ahead_seconds` further into the queue; `next_frame(speak=False)` renders
    an idle frame (silence: the mouth closes, blinks and head sway go on) and leaves the queue as it
    is, which is how a session holds back a talk spurt until its jitter buffer is full.
    """

    #: frames per second of the video (the backend's declared rate)
    fps: float
    #: the size of every frame
    width: int
    height: int
    #: the most speech past a frame's own the generator reads before rendering it (≤ 0.12 s)
    look_ahead_seconds: float

    @property
    def samples_per_frame(self) -> int:
        """16 kHz samples each frame carries (640 at 25 fps)."""
        return round(16_000 / self.fps)

    @abc.abstractmethod
    def push_speech(self, samples: np.ndarray) -> None:
        """Queue speech to be shown after what is already queued."""

    @abc.abstractmethod
    def interrupt(self) -> None:
        """Drop the queued speech: the next frame is silent, and its mouth is already closing."""

    @property
    @abc.abstractmethod
    def queued_seconds(self) -> float:
        """Seconds of speech queued and not yet shown."""

    @abc.abstractmethod
    def next_frame(self, speak: bool = True) -> LiveFrame:
        """Render the next frame; never blocks."""

    def close(self) -> None:  # noqa: B027 - a generator holding nothing has nothing to release
        """Release what the generator holds (a GPU backend's caches); the session calls it once, at its end."""
