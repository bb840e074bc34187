"""Generate and encode together: each frame batch goes into the writer as the backend yields it,
so memory stays flat in the video's length, and a stop, or a video past its inline limit, ends
generation at the next step."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Generator
from pathlib import Path
from typing import cast

import numpy as np

from handler.cancel import JobControl
from handler.delivery_plan import InlineLimit
from handler.media import DecodedAudio
from handler.progress import PERCENT_AFTER_GENERATE, PERCENT_AFTER_PREPARE, ProgressReporter
from handler.segments import SegmentWriter
from handler.streaming import SegmentSinks
from handler.video import FfmpegEncoder, Mp4Writer, output_size
from model.base import GenerationOptions, PreparedPortrait, TalkingHeadBackend, num_frames_for

log = logging.getLogger(__name__)


class StepGuard:
    """What runs between two steps of generation: the stop check, progress, the inline size check.

    The backends call `on_progress` once per diffusion step or frame batch, so a stop asked for
    (JobCancelled) ends generation at the next step; the size check stops a video bound for the
    inline result as soon as it is certain not to fit (the MP4 only grows as it is written).
    """

    def __init__(
        self, job_id: str, control: JobControl, progress: ProgressReporter, video: Path,
        inline_limit: InlineLimit | None,
    ) -> None:
        self._job_id = job_id
        self._control = control
        self._progress = progress
        self._video = video
        self._inline_limit = inline_limit

    def on_progress(self, fraction: float, detail: str) -> None:
        if self._control.stopped:
            log.info("job %s: generation stops at %s (%.0f%%)", self._job_id, detail, 100 * fraction)
            self._control.check()
        span = PERCENT_AFTER_GENERATE - PERCENT_AFTER_PREPARE
        self._progress.report("generate", PERCENT_AFTER_PREPARE + span * fraction, detail)

    def check_size(self, frames_written: int, frames_expected: int) -> None:
        if self._inline_limit is not None and self._video.exists():
            so_far = f" after {frames_written} of {frames_expected} frames"
            self._inline_limit.check(self._video.stat().st_size, so_far)


@dataclasses.dataclass(frozen=True)
class Rendered:
    num_frames: int
    #: the encoded video's frame size (handler/video.py's `output_size`)
    width: int
    height: int
    generate_seconds: float
    encode_seconds: float


def render(
    backend: TalkingHeadBackend, portrait: PreparedPortrait, audio: DecodedAudio, options: GenerationOptions,
    video: Path, sinks: SegmentSinks | None, guard: StepGuard,
) -> Rendered:
    """The frames of the whole speech, written as they come: into the MP4 `video`, or with `sinks`
    (a stream job) into segments, handed to the sinks as each is complete, in the sinks' folder."""
    fps = backend.frame_rate(options.mode)
    expected = num_frames_for(audio.speech.duration_seconds, fps)
    encode_seconds = 0.0
    clock = time.monotonic()
    writer: FfmpegEncoder
    size = output_size(portrait, options.source_video)
    if sinks is None:
        writer = Mp4Writer(video, portrait.width, portrait.height, fps, audio.mux_wav, size)
    else:
        writer = SegmentWriter(sinks.directory, portrait.width, portrait.height, fps,
                               audio.mux_wav, expected, sinks.plan, sinks, size)
    with writer:
        # closing(): a failure or a stop closes the generator at once, not whenever it is collected.
        # The interface promises an Iterator; every backend's generate() is a generator function.
        generated = cast(Generator[np.ndarray, None, None],
                         backend.generate(portrait, audio.speech, options, guard.on_progress))
        with contextlib.closing(generated) as batches:
            for frames in batches:
                encode_started = time.monotonic()
                writer.write(frames)
                guard.check_size(writer.frames_written, expected)
                encode_seconds += time.monotonic() - encode_started
        if writer.frames_written != expected:
            raise RuntimeError(f"backend produced {writer.frames_written} frames, expected {expected}")
        finish_started = time.monotonic()
    encode_seconds += time.monotonic() - finish_started
    return Rendered(writer.frames_written, *size, time.monotonic() - clock - encode_seconds, encode_seconds)
