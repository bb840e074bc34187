"""From 16 kHz speech to per-video-frame mouth parameters.

Loudness (RMS in dB, relative to the recording's own loud parts) opens the jaw; the balance of
high to low spectral energy spreads the lips (front vowels, sibilants) or rounds them (back
vowels). An envelope with a fast attack and a slower release keeps syllables distinct, and a
noise gate keeps the mouth fully closed in silence.
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


@dataclasses.dataclass(frozen=True)
class MouthTrack:
    """Per video frame: jaw opening in [0, 1] and lip spread in [-1, 1]."""

    opening: np.ndarray
    spread: np.ndarray


def analyse(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 10 ms hop: level in dBFS and high/low band balance in dB."""
    samples = np.asarray(samples, dtype=np.float32)
    num_hops = max(1, int(np.ceil(len(samples) / HOP)))
    padded = np.pad(samples, (WINDOW // 2, WINDOW // 2 + num_hops * HOP))
    window = np.hanning(WINDOW).astype(np.float32)
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / SPEECH_SAMPLE_RATE)
    low = (freqs >= LOW_BAND_HZ[0]) & (freqs < LOW_BAND_HZ[1])
    high = (freqs >= HIGH_BAND_HZ[0]) & (freqs < HIGH_BAND_HZ[1])

    level = np.empty(num_hops, dtype=np.float64)
    balance = np.empty(num_hops, dtype=np.float64)
    for start in range(0, num_hops, CHUNK_HOPS):
        count = min(CHUNK_HOPS, num_hops - start)
        span = padded[start * HOP : (start + count - 1) * HOP + WINDOW]
        frames = np.lib.stride_tricks.sliding_window_view(span, WINDOW)[::HOP][:count]
        power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
        mean_square = (frames**2).mean(axis=1)
        level[start : start + count] = 10.0 * np.log10(mean_square + 1e-12)
        balance[start : start + count] = 10.0 * np.log10(
            (power[:, high].sum(axis=1) + 1e-9) / (power[:, low].sum(axis=1) + 1e-9)
        )
    return level, balance


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
    loud = np.percentile(level, LOUD_PERCENTILE)
    gate = max(loud - DYNAMIC_RANGE_DB, ABSOLUTE_GATE_DB)
    full = max(loud, gate + 6.0)
    raw_opening = np.clip((level - gate) / (full - gate), 0.0, 1.0) ** OPENING_CURVE

    hop_rate = SPEECH_SAMPLE_RATE / HOP
    opening = attack_release(raw_opening, hop_rate, ATTACK_SECONDS, RELEASE_SECONDS)
    raw_spread = np.clip(
        2.0 * (balance - ROUNDED_BALANCE_DB) / (SPREAD_BALANCE_DB - ROUNDED_BALANCE_DB) - 1.0, -1.0, 1.0
    )
    # the spectrum of near-silence says nothing about the lips
    raw_spread *= np.clip(raw_opening * 3.0, 0.0, 1.0)
    spread = attack_release(raw_spread, hop_rate, SPREAD_SMOOTHING_SECONDS, SPREAD_SMOOTHING_SECONDS)

    hop_times = np.arange(len(level)) / hop_rate
    frame_times = (np.arange(num_frames) + 0.5) / fps
    frame_opening = np.interp(frame_times, hop_times, opening)
    # below a hair's width of opening the mouth is simply closed
    frame_opening[frame_opening < 0.02] = 0.0
    frame_spread = np.interp(frame_times, hop_times, spread) - JAW_NARROWING * frame_opening
    return MouthTrack(
        opening=frame_opening.astype(np.float32),
        spread=np.clip(frame_spread, -1.0, 1.0).astype(np.float32),
    )
