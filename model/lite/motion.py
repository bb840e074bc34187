"""Blinks and head motion: seeded, so one seed always gives the same video."""

from __future__ import annotations

import dataclasses

import numpy as np

BLINK_INTERVAL_SECONDS = (3.0, 6.0)
FIRST_BLINK_SECONDS = (0.6, 3.0)
# eyelid closure over one blink, sampled every 10 ms: closes in ~50 ms, reopens in ~100 ms
BLINK_SHAPE = np.concatenate([np.linspace(0.0, 1.0, 6)[1:], [1.0, 1.0], np.linspace(1.0, 0.0, 11)[1:]])
BLINK_SHAPE_RATE = 100.0

# head sway: a few slow sinusoids per axis (Hz), amplitudes relative to the face height
SWAY_FREQUENCY_HZ = (0.07, 0.45)
SWAY_COMPONENTS = 3
SHIFT_X_AMPLITUDE = 0.012
SHIFT_Y_AMPLITUDE = 0.007
ROLL_AMPLITUDE_RADIANS = np.deg2rad(1.3)
# the head dips a little with the emphasis of the speech
NOD_PER_OPENING = 0.008
NOD_SMOOTHING_SECONDS = 0.25


@dataclasses.dataclass(frozen=True)
class HeadTrack:
    """Per video frame: shift in px (x, y) and roll in radians."""

    shift_x: np.ndarray
    shift_y: np.ndarray
    roll: np.ndarray


def seeded_generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for blinks and head motion, so tuning one leaves the other alone."""
    blink_seed, head_seed = np.random.SeedSequence(seed % 2**63).spawn(2)
    return np.random.default_rng(blink_seed), np.random.default_rng(head_seed)


def blink_track(num_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure per frame in [0, 1]."""
    duration = num_frames / fps
    closure = np.zeros(num_frames, dtype=np.float32)
    frame_times = (np.arange(num_frames) + 0.5) / fps
    shape_times = np.arange(len(BLINK_SHAPE)) / BLINK_SHAPE_RATE
    start = rng.uniform(*FIRST_BLINK_SECONDS)
    while start < duration:
        first = max(0, int(start * fps))
        last = min(num_frames, int((start + shape_times[-1]) * fps) + 2)
        local = frame_times[first:last] - start
        closure[first:last] = np.maximum(
            closure[first:last], np.interp(local, shape_times, BLINK_SHAPE, left=0.0, right=0.0)
        )
        start += rng.uniform(*BLINK_INTERVAL_SECONDS)
    return closure


@dataclasses.dataclass(frozen=True)
class SwayWave:
    """A smooth random wobble in about [-1, 1]: a few slow sinusoids, readable at any time."""

    freqs: np.ndarray
    phases: np.ndarray
    weights: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator) -> SwayWave:
        freqs = rng.uniform(*SWAY_FREQUENCY_HZ, size=SWAY_COMPONENTS)
        phases = rng.uniform(0.0, 2 * np.pi, size=SWAY_COMPONENTS)
        weights = rng.uniform(0.5, 1.0, size=SWAY_COMPONENTS)
        return cls(freqs, phases, weights)

    def at(self, times: np.ndarray) -> np.ndarray:
        waves = np.sin(2 * np.pi * self.freqs[:, None] * times[None, :] + self.phases[:, None])
        return (self.weights[:, None] * waves).sum(axis=0) / self.weights.sum()


def sway(num_frames: int, fps: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random wobble in about [-1, 1]."""
    return SwayWave.draw(rng).at(np.arange(num_frames) / fps)


def head_track(
    num_frames: int, fps: float, rng: np.random.Generator, face_height: float, opening: np.ndarray
) -> HeadTrack:
    nod = np.empty(num_frames, dtype=np.float64)
    state, keep = 0.0, np.exp(-1.0 / (NOD_SMOOTHING_SECONDS * fps))
    for i, value in enumerate(opening):
        state = keep * state + (1.0 - keep) * float(value)
        nod[i] = state
    return HeadTrack(
        shift_x=(SHIFT_X_AMPLITUDE * face_height * sway(num_frames, fps, rng)).astype(np.float32),
        shift_y=(face_height * (SHIFT_Y_AMPLITUDE * sway(num_frames, fps, rng)
                                + NOD_PER_OPENING * nod)).astype(np.float32),
        roll=(ROLL_AMPLITUDE_RADIANS * sway(num_frames, fps, rng)).astype(np.float32),
    )


# --- motion without an end, one frame at a time (live sessions) ------------------------------

class BlinkClock:
    """Eyelid closure frame by frame, for as long as asked: the blinks `blink_track` places for
    the same generator, drawn one at a time (each blink ends long before the next can start)."""

    def __init__(self, fps: float, rng: np.random.Generator) -> None:
        self._fps = fps
        self._rng = rng
        self._shape_times = np.arange(len(BLINK_SHAPE)) / BLINK_SHAPE_RATE
        self._start = float(rng.uniform(*FIRST_BLINK_SECONDS))

    def closure(self, frame: int) -> float:
        """Closure in [0, 1] at frame `frame`; frames are asked for in increasing order."""
        time = (frame + 0.5) / self._fps
        while time > self._start + self._shape_times[-1]:
            self._start += float(self._rng.uniform(*BLINK_INTERVAL_SECONDS))
        return float(np.interp(time - self._start, self._shape_times, BLINK_SHAPE, left=0.0, right=0.0))


class HeadMotion:
    """`head_track` frame by frame: phase-continuous sway for as long as asked, and the nod that
    follows the jaw's opening."""

    def __init__(self, fps: float, rng: np.random.Generator, face_height: float) -> None:
        self._fps = fps
        self._face_height = face_height
        self._x, self._y, self._roll = (SwayWave.draw(rng) for _ in range(3))
        self._nod_keep = float(np.exp(-1.0 / (NOD_SMOOTHING_SECONDS * fps)))
        self._nod = 0.0

    def pose(self, frame: int, opening: float) -> tuple[float, float, float]:
        """Shift x, shift y (px) and roll (radians) at frame `frame`, whose jaw opening is `opening`;
        called once per frame, in order."""
        self._nod = self._nod_keep * self._nod + (1.0 - self._nod_keep) * opening
        time = np.array([frame / self._fps])
        shift_x = SHIFT_X_AMPLITUDE * self._face_height * float(self._x.at(time)[0])
        shift_y = self._face_height * (SHIFT_Y_AMPLITUDE * float(self._y.at(time)[0]) + NOD_PER_OPENING * self._nod)
        roll = ROLL_AMPLITUDE_RADIANS * float(self._roll.at(time)[0])
        return shift_x, shift_y, float(roll)
