"""From 16 kHz speech to per-video-frame mouth parameters.

Loudness (RMS in dB, relative to the recording's own loud parts) opens the jaw; the balance of
high to low spectral energy spreads the lips (front vowels, sibilants) or rounds them (back
vowels). An envelope with a fast attack and a slower release keeps syllables distinct, and a
noise gate keeps the mouth fully closed in silence.

`mouth_track` reads a finished recording; `CausalMouth` is the same mapping fed hop by hop, for
speech that arrives as it is spoken: it cannot know the recording's loud parts, so a
`LoudnessReference` learns them from the speech heard so far.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model.base import SPEECH_SAMPLE_RATE

HOP = SPEECH_SAMPLE_RATE // 100  # analysis every 10 ms
WINDOW = 512  # 32 ms
CHUNK_HOPS = 2048  # analysis frames per block, so memory stays small for hours of audio

# The loud parts of the recording open the mouth fully; the gate sits this far below them.
LOUD_PERCENTILE = 95.0
DYNAMIC_RANGE_DB = 26.0
# Nothing quieter than this (dBFS) ever opens the mouth: room noise, breaths, dither.
ABSOLUTE_GATE_DB = -55.0
OPENING_CURVE = 1.9
ATTACK_SECONDS = 0.035
RELEASE_SECONDS = 0.11
SPREAD_SMOOTHING_SECONDS = 0.06
# Band-energy balance (dB, high over low) mapped onto lip spread -1 (rounded) .. +1 (spread).
LOW_BAND_HZ = (200.0, 1000.0)
HIGH_BAND_HZ = (1800.0, 5000.0)
ROUNDED_BALANCE_DB = -22.0
SPREAD_BALANCE_DB = -4.0
# a dropping jaw draws the lip corners in
JAW_NARROWING = 0.35
# below a hair's width of opening the mouth is simply closed
CLOSED_OPENING = 0.02


@dataclasses.dataclass(frozen=True)
class MouthTrack:
    """Per video frame: jaw opening in [0, 1] and lip spread in [-1, 1]."""

    opening: np.ndarray
    spread: np.ndarray


_HANN = np.hanning(WINDOW).astype(np.float32)
_FREQS = np.fft.rfftfreq(WINDOW, 1.0 / SPEECH_SAMPLE_RATE)
_LOW_BAND = (_FREQS >= LOW_BAND_HZ[0]) & (_FREQS < LOW_BAND_HZ[1])
_HIGH_BAND = (_FREQS >= HIGH_BAND_HZ[0]) & (_FREQS < HIGH_BAND_HZ[1])


def hop_analysis(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level (dBFS) and high/low band balance (dB) of each WINDOW-sample float32 row of `frames`."""
    power = np.abs(np.fft.rfft(frames * _HANN, axis=1)) ** 2
    mean_square = (frames**2).mean(axis=1)
    level = 10.0 * np.log10(mean_square + 1e-12)
    balance = 10.0 * np.log10((power[:, _HIGH_BAND].sum(axis=1) + 1e-9) / (power[:, _LOW_BAND].sum(axis=1) + 1e-9))
    return level, balance


def analyse(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 10 ms hop: level in dBFS and high/low band balance in dB.

    Hop k's window is centred on sample k * HOP: it reads WINDOW // 2 samples either side.
    """
    samples = np.asarray(samples, dtype=np.float32)
    num_hops = max(1, int(np.ceil(len(samples) / HOP)))
    padded = np.pad(samples, (WINDOW // 2, WINDOW // 2 + num_hops * HOP))

    level = np.empty(num_hops, dtype=np.float64)
    balance = np.empty(num_hops, dtype=np.float64)
    for start in range(0, num_hops, CHUNK_HOPS):
        count = min(CHUNK_HOPS, num_hops - start)
        span = padded[start * HOP : (start + count - 1) * HOP + WINDOW]
        frames = np.lib.stride_tricks.sliding_window_view(span, WINDOW)[::HOP][:count]
        level[start : start + count], balance[start : start + count] = hop_analysis(frames)
    return level, balance


def raw_opening(level: np.ndarray | float, gate: float, full: float) -> np.ndarray:
    """Jaw opening before the envelope: nothing at the gate, fully open at the loud level."""
    return np.clip((level - gate) / (full - gate), 0.0, 1.0) ** OPENING_CURVE


def raw_spread(balance: np.ndarray | float, opening: np.ndarray | float) -> np.ndarray:
    """Lip spread before smoothing, from the band balance; near-silence says nothing about the lips."""
    spread = np.clip(2.0 * (balance - ROUNDED_BALANCE_DB) / (SPREAD_BALANCE_DB - ROUNDED_BALANCE_DB) - 1.0, -1.0, 1.0)
    return spread * np.clip(opening * 3.0, 0.0, 1.0)


def gate_and_full(loud: float) -> tuple[float, float]:
    """The level that starts opening the mouth and the one that opens it fully, for a loud level."""
    gate = max(loud - DYNAMIC_RANGE_DB, ABSOLUTE_GATE_DB)
    return gate, max(loud, gate + 6.0)


def attack_release(values: np.ndarray, rate: float, attack: float, release: float) -> np.ndarray:
    """One-pole envelope follower: rises with time constant `attack`, falls with `release`."""
    up = 1.0 - np.exp(-1.0 / (attack * rate))
    down = 1.0 - np.exp(-1.0 / (release * rate))
    out = np.empty_like(values)
    state = 0.0
    for i, value in enumerate(values):
        state += (up if value > state else down) * (value - state)
        out[i] = state
    return out


def mouth_track(samples: np.ndarray, fps: float, num_frames: int) -> MouthTrack:
    level, balance = analyse(samples)
    gate, full = gate_and_full(float(np.percentile(level, LOUD_PERCENTILE)))
    hop_opening = raw_opening(level, gate, full)

    hop_rate = SPEECH_SAMPLE_RATE / HOP
    opening = attack_release(hop_opening, hop_rate, ATTACK_SECONDS, RELEASE_SECONDS)
    hop_spread = raw_spread(balance, hop_opening)
    spread = attack_release(hop_spread, hop_rate, SPREAD_SMOOTHING_SECONDS, SPREAD_SMOOTHING_SECONDS)

    hop_times = np.arange(len(level)) / hop_rate
    frame_times = (np.arange(num_frames) + 0.5) / fps
    frame_opening = np.interp(frame_times, hop_times, opening)
    frame_opening[frame_opening < CLOSED_OPENING] = 0.0
    frame_spread = np.interp(frame_times, hop_times, spread) - JAW_NARROWING * frame_opening
    return MouthTrack(
        opening=frame_opening.astype(np.float32),
        spread=np.clip(frame_spread, -1.0, 1.0).astype(np.float32),
    )


# --- speech as it is spoken -------------------------------------------------------------------

# The loud level of live speech: this percentile of the hops above the absolute gate. Over speech
# alone (no pauses) it sits where the 95th percentile of a whole recording with its pauses does:
# assets/speech.wav, -21.8 dBFS, has -16.3 and -15.8 dB.
LIVE_LOUD_PERCENTILE = 90.0
# Before any speech is heard the reference is a typical talker's: loud parts at -18 dBFS, so that
# TTS and browser microphones with AGC (-30..-15 dBFS in speech) open the mouth from the first syllable.
PRIOR_LOUD_DB = -18.0
PRIOR_SPREAD_DB = 5.0
# The prior weighs as much as this many seconds of speech and fades over as many seconds of speech
# heard, so that a quiet or loud talker takes over within seconds (the top tenth of a fading prior
# would otherwise hold a quiet talker's reference up); what was heard fades over
# MEMORY_SPEECH_SECONDS of speech. Silence changes nothing.
PRIOR_SPEECH_SECONDS = 1.0
MEMORY_SPEECH_SECONDS = 8.0
LEVEL_BINS_DB = (-80.0, 0.0)


class LoudnessReference:
    """A causal stand-in for the loud level `mouth_track` takes from the whole recording.

    Two histograms of hop levels (1 dB bins), a typical talker's (the prior) and the speech heard,
    each fading with every hop heard; the LIVE_LOUD_PERCENTILE of their sum is the loud level. Its
    memory is fixed whatever the session's length. Only hops above the absolute gate count: room
    noise and silence never move it.
    """

    def __init__(self) -> None:
        low, high = LEVEL_BINS_DB
        self._edges = np.arange(low, high + 1.0)
        centres = self._edges[:-1] + 0.5
        # the prior's median sits so that its LIVE_LOUD_PERCENTILE is PRIOR_LOUD_DB (1.2816: normal 90 %)
        median = PRIOR_LOUD_DB - 1.2816 * PRIOR_SPREAD_DB
        prior = np.exp(-0.5 * ((centres - median) / PRIOR_SPREAD_DB) ** 2)
        hop_rate = SPEECH_SAMPLE_RATE / HOP
        self._prior = prior * (PRIOR_SPEECH_SECONDS * hop_rate / prior.sum())
        self._heard = np.zeros_like(self._prior)
        self._prior_keep = float(np.exp(-1.0 / (PRIOR_SPEECH_SECONDS * hop_rate)))
        self._heard_keep = float(np.exp(-1.0 / (MEMORY_SPEECH_SECONDS * hop_rate)))
        self.loud = self._percentile()

    def hear(self, level: float) -> None:
        """Take one hop's level (dBFS) into the reference."""
        if level < ABSOLUTE_GATE_DB:
            return
        low, high = LEVEL_BINS_DB
        self._prior *= self._prior_keep
        self._heard *= self._heard_keep
        self._heard[min(int(level - low), int(high - low) - 1)] += 1.0
        self.loud = self._percentile()

    def _percentile(self) -> float:
        counts = self._prior + self._heard
        cumulative = np.cumsum(counts)
        target = cumulative[-1] * LIVE_LOUD_PERCENTILE / 100.0
        index = int(np.searchsorted(cumulative, target))
        below = cumulative[index - 1] if index else 0.0
        within = (target - below) / max(counts[index], 1e-12)
        return float(self._edges[index] + within)


@dataclasses.dataclass(frozen=True)
class MouthState:
    """The envelopes after a hop: jaw opening in [0, 1] and lip spread in [-1, 1], before the jaw narrows the lips."""

    opening: float = 0.0
    spread: float = 0.0

    def pose(self) -> tuple[float, float]:
        """Opening and spread as `mouth_track` hands them to a frame."""
        opening = self.opening if self.opening >= CLOSED_OPENING else 0.0
        return opening, min(max(self.spread - JAW_NARROWING * opening, -1.0), 1.0)


class CausalMouth:
    """`mouth_track`'s mapping fed one hop at a time, with a loudness reference learnt as it goes.

    `advance` takes hops of speech that was shown and moves the envelopes and the reference;
    `peek` runs the envelopes over hops of speech not shown yet (the look-ahead) and changes nothing.
    """

    def __init__(self) -> None:
        self.reference = LoudnessReference()
        self.state = MouthState()
        hop_rate = SPEECH_SAMPLE_RATE / HOP
        self._attack = 1.0 - float(np.exp(-1.0 / (ATTACK_SECONDS * hop_rate)))
        self._release = 1.0 - float(np.exp(-1.0 / (RELEASE_SECONDS * hop_rate)))
        self._spread_step = 1.0 - float(np.exp(-1.0 / (SPREAD_SMOOTHING_SECONDS * hop_rate)))

    def advance(self, levels: np.ndarray, balances: np.ndarray) -> MouthState:
        for level, balance in zip(levels.tolist(), balances.tolist(), strict=True):
            self.reference.hear(level)
            self.state = self._step(self.state, level, balance)
        return self.state

    def peek(self, levels: np.ndarray, balances: np.ndarray) -> MouthState:
        state = self.state
        for level, balance in zip(levels.tolist(), balances.tolist(), strict=True):
            state = self._step(state, level, balance)
        return state

    def _step(self, state: MouthState, level: float, balance: float) -> MouthState:
        # `raw_opening` and `raw_spread` on one hop, in plain floats (numpy's per-call cost would
        # be most of a frame's speech work)
        gate, full = gate_and_full(self.reference.loud)
        target = min(max((level - gate) / (full - gate), 0.0), 1.0) ** OPENING_CURVE
        lips = 2.0 * (balance - ROUNDED_BALANCE_DB) / (SPREAD_BALANCE_DB - ROUNDED_BALANCE_DB) - 1.0
        lips = min(max(lips, -1.0), 1.0) * min(target * 3.0, 1.0)
        opening = state.opening + (self._attack if target > state.opening else self._release) * (target - state.opening)
        return MouthState(opening, state.spread + self._spread_step * (lips - state.spread))
