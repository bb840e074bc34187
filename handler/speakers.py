"""Two speakers' speeches laid out in time, and the one speech they make together (`speaker_timing`).

As the reference lays them out (InfiniteTalk's `audio_prepare_multi`, audio_type "para" and
"add"): "parallel" keeps both from the start, over the same time; "sequential" puts the second
speaker's after the first's, each silent while the other speaks. Each track is then padded with
silence at its end to the length of the whole, so that both are as long as the job's speech, and
the job's speech (what the backend animates the timing of, and what goes into the MP4) is their
sum, clipped to [-1, 1] as the reference's 16-bit WAV of the sum clips it. Where the reference
would fail on parallel speeches of different lengths (its sum needs equal lengths), the shorter is
padded with silence. Unlike the reference, the tracks are not loudness-normalised here: the MP4
keeps the speakers' own levels, as a one-speaker job keeps its speech's; what a model needs of its
input (a normalisation for its speech features) is its backend's to do.

The mix is made at the model's 16 kHz, and that is the MP4's audio too (as in the reference, whose
video carries the 16 kHz sum): one mix, so that what is heard is what the mouths were made from.
"""

from __future__ import annotations

import dataclasses
import wave
from pathlib import Path

import numpy as np

from model.base import SPEECH_SAMPLE_RATE, Speech

PARALLEL, SEQUENTIAL = "parallel", "sequential"


@dataclasses.dataclass(frozen=True)
class SpeakerLayout:
    """Each speaker's track placed in time and padded to the whole, and their mix (the job's speech)."""

    tracks: tuple[Speech, Speech]
    mix: Speech


def lay_out(first: Speech, second: Speech, timing: str) -> SpeakerLayout:
    """The two speeches as `timing` ("parallel" or "sequential") lays them out."""
    if timing == PARALLEL:
        offsets = (0, 0)
    elif timing == SEQUENTIAL:
        offsets = (0, len(first.samples))
    else:
        raise ValueError(f"unknown speaker timing {timing!r}")
    speeches = (first, second)
    total = max(offset + len(speech.samples) for offset, speech in zip(offsets, speeches, strict=True))
    tracks = []
    for offset, speech in zip(offsets, speeches, strict=True):
        track = np.zeros(total, dtype=np.float32)
        track[offset:offset + len(speech.samples)] = speech.samples
        tracks.append(Speech(samples=track))
    mix = np.clip(tracks[0].samples + tracks[1].samples, -1.0, 1.0).astype(np.float32)
    return SpeakerLayout(tracks=(tracks[0], tracks[1]), mix=Speech(samples=mix))


def write_wav(speech: Speech, path: Path) -> Path:
    """`speech` as a 16 kHz mono 16-bit WAV at `path` (the MP4's audio)."""
    pcm = np.round(np.clip(speech.samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SPEECH_SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return path
