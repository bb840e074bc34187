"""Speech -> mouth parameters: loudness opens, spectrum spreads or rounds, silence stays shut."""

from __future__ import annotations

import numpy as np

from model.lite.speech_features import mouth_track

RATE = 16_000
FPS = 25.0


def harmonic_tone(seconds: float, f0: float, top_harmonic: int, level: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, top_harmonic + 1))
    return (level * wave / np.abs(wave).max()).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


def frames_in(start: float, end: float) -> slice:
    return slice(int(round(start * FPS)), int(round(end * FPS)))


def test_closed_in_silence_open_while_voiced():
    samples = np.concatenate([silence(1.0), harmonic_tone(0.6, 140.0, 12, 0.5), silence(1.0)])
    track = mouth_track(samples, FPS, 65)
    assert track.opening.shape == (65,) and track.spread.shape == (65,)
    assert (track.opening[frames_in(0.0, 0.95)] == 0).all()
    assert track.opening[frames_in(1.1, 1.6)].min() > 0.8
    # released within half a second, and then exactly shut
    assert (track.opening[frames_in(2.1, 2.6)] == 0).all()
    assert (track.spread[frames_in(0.0, 0.95)] == 0).all()


def test_attack_is_faster_than_release():
    samples = np.concatenate([silence(0.5), harmonic_tone(0.5, 140.0, 12, 0.5), silence(0.5)])
    opening = mouth_track(samples, FPS, 38).opening
    onset, offset = 12, 25  # frame centres 0.5 s and 1.0 s
    frames_to_open = int(np.argmax(opening[onset:] > 0.7))
    frames_to_close = int(np.argmax(opening[offset:] < 0.3))
    assert frames_to_open <= 2
    assert frames_to_close > frames_to_open


def test_room_noise_alone_never_opens_the_mouth():
    noise = np.random.default_rng(0).normal(0.0, 10 ** (-70 / 20), 2 * RATE).astype(np.float32)
    assert (mouth_track(noise, FPS, 50).opening == 0).all()


def test_quiet_syllables_open_less_than_loud_ones():
    samples = np.concatenate([
        harmonic_tone(0.4, 140.0, 12, 0.5), silence(0.3), harmonic_tone(0.4, 140.0, 12, 0.05),
        silence(0.3),
    ])
    opening = mouth_track(samples, FPS, 35).opening
    assert opening[frames_in(0.1, 0.4)].mean() > opening[frames_in(0.8, 1.1)].mean() + 0.3


def test_bright_sound_spreads_the_lips_and_dark_sound_rounds_them():
    bright = harmonic_tone(0.6, 600.0, 7, 0.5) + harmonic_tone(0.6, 2500.0, 1, 0.4)
    dark = harmonic_tone(0.6, 120.0, 4, 0.5)
    samples = np.concatenate([bright, silence(0.3), dark])
    spread = mouth_track(samples, FPS, 38).spread
    assert spread[frames_in(0.2, 0.6)].mean() > 0.2
    assert spread[frames_in(1.1, 1.5)].mean() < -0.2
