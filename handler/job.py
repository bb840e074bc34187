"""One job, start to finish: input → media → model → MP4 → delivery → result (docs/CONTRACT.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, cast

import numpy as np

from handler import delivery
from handler.bucket import BucketSettings
from handler.cancel import JobCancelled, JobControl
from handler.errors import ErrorCode, JobError
from handler.fetch import fetch_url
from handler.media import DecodedAudio, decode_audio, decode_base64, decode_image
from handler.presets import PresetAvatars
from handler.progress import ProgressReporter
from handler.schema import JobRequest, MediaSource, parse_job
from handler.segments import SegmentPlan, SegmentWriter
from handler.settings import WorkerSettings
from handler.streaming import BucketPlaylist, SegmentSinks, StreamItem
from handler.video import FfmpegEncoder, Mp4Writer
from model.base import (
    BackendOutOfMemoryError,
    GenerationOptions,
    InvalidOptionError,
    ModelUnavailableError,
    NoFaceError,
    PreparedPortrait,
    TalkingHeadBackend,
    num_frames_for,
)

log = logging.getLogger(__name__)

# Share of the progress bar each stage takes.
PERCENT_AFTER_INPUTS = 5.0
PERCENT_AFTER_PREPARE = 10.0
PERCENT_AFTER_GENERATE = 95.0


@dataclasses.dataclass
class Worker:
    """What lives for the whole worker: settings, the loaded model (or why it failed), presets."""

    settings: WorkerSettings
    backend: TalkingHeadBackend | None
    presets: PresetAvatars | None
    #: set when the worker could not start properly; every job then fails with it
    startup_error: JobError | None = None
    #: set when this machine cannot run the model (no usable GPU, too little memory, weights that
    #: do not load): RunPod should replace the worker (handler/__main__.py), not feed it jobs
    host_fault: str | None = None

    @property
    def loaded_backend(self) -> TalkingHeadBackend:
        """The model a job runs on; a worker without one raises the error it started with."""
        if self.backend is None:
            assert self.startup_error is not None, "a worker is built without a model only with its startup error"
            raise self.startup_error
        return self.backend

    @property
    def default_mode(self) -> str:
        """The `mode` of a job that names none: DEFAULT_MODE, else the backend's first mode."""
        return self.settings.default_mode or self.loaded_backend.modes[0]

    @functools.cached_property
    def device(self) -> str:
        """The result's `gpu`: the device the model runs on (`cpu` for the CPU backend)."""
        return self.backend.device_name if self.backend is not None else "cpu"

    def handle(
        self, job: dict[str, Any], control: JobControl | None = None, keep_video_at: Path | None = None,
        emit: Callable[[StreamItem], None] | None = None,
    ) -> dict[str, Any]:
        """Run one job. Never raises: failures become `{"error": "CODE: sentence"}`.

        `control` stops the job at its next step when asked to (handler/cancel.py). With
        `keep_video_at` (the always-on server, which serves the file itself) a finished MP4 is
        moved there, and `output_type` "auto" without a bucket keeps it there only, neither
        inline nor uploaded; "base64" and "s3" deliver it as well. `emit` (a generator handler,
        STREAM_RESULTS) takes a `stream` job's segments as stream items while it renders; the
        video is then not also sent inline.
        """
        job_id = str(job.get("id") or "local")
        control = control or JobControl()
        try:
            return self._outcome(job, job_id, control, keep_video_at, emit)
        except JobCancelled as stop:
            reason = stop.reason
        # Out of the except clause, the exception and the frames its traceback held are gone.
        if self.backend is not None:
            self.backend.release_memory()
        assert control.requested_at is not None, "a stop sets its time along with its reason"
        log.info("job %s stopped %.2f s after the stop was asked for (%s); its files are removed",
                 job_id, time.monotonic() - control.requested_at, reason)
        message = f"the job was stopped before it finished: {reason}. Submit it again."
        return {"error": str(JobError(ErrorCode.INTERNAL, message))}

    def _outcome(
        self, job: dict[str, Any], job_id: str, control: JobControl, keep_video_at: Path | None,
        emit: Callable[[StreamItem], None] | None,
    ) -> dict[str, Any]:
        """The job's result, or its failure as the contract's error (JobCancelled passes through)."""
        started = time.monotonic()
        try:
            if self.startup_error is not None:
                raise self.startup_error
            result = self._run(job, job_id, started, control, keep_video_at, emit)
            delivered = ("uploaded" if "video_url" in result else "inline" if "video_base64" in result
                         else "streamed" if emit is not None and "segments" in result else "kept")
            log.info("job %s done in %.2f s: %dx%d, %d frames, %d bytes, %s", job_id,
                     result["generation_time_seconds"], result["width"], result["height"], result["num_frames"],
                     result["file_size_bytes"], delivered)
            return result
        except JobError as error:
            log.info("job %s failed: %s", job_id, error)
            return {"error": str(error)}
        except NoFaceError as error:
            return {"error": str(JobError(ErrorCode.NO_FACE, str(error)))}
        except ModelUnavailableError as error:
            return {"error": str(JobError(ErrorCode.MODEL_UNAVAILABLE, str(error)))}
        except BackendOutOfMemoryError as error:
            log.error("job %s ran out of GPU memory; asking for a fresh worker", job_id)
            return {"error": str(JobError(ErrorCode.OUT_OF_MEMORY, str(error))), "refresh_worker": True}
        except Exception as error:  # noqa: BLE001 - the worker must survive anything a job does
            translated = self.backend.translate_error(error) if self.backend is not None else error
            if isinstance(translated, BackendOutOfMemoryError):
                log.error("job %s ran out of GPU memory; asking for a fresh worker", job_id)
                return {"error": str(JobError(ErrorCode.OUT_OF_MEMORY, str(translated))), "refresh_worker": True}
            log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
            message = ("the worker hit an unexpected error; it was logged with the job id. "
                       "Retry, and report it if it persists.")
            output: dict[str, Any] = {"error": str(JobError(ErrorCode.INTERNAL, message))}
            if self.backend is not None and self.backend.needs_fresh_worker(error):
                output["refresh_worker"] = True
            return output

    def _run(
        self, job: dict[str, Any], job_id: str, started: float, control: JobControl, keep_video_at: Path | None,
        emit: Callable[[StreamItem], None] | None,
    ) -> dict[str, Any]:
        progress = ProgressReporter(job)
        request = parse_job(job, self.settings.max_audio_seconds, self.default_mode)
        # Before any media is fetched or decoded: a job that cannot succeed costs nothing.
        options = self._options(request)
        bucket = request.s3_override or self.settings.bucket
        destination = delivery.choose_destination(request.output_type, bucket)
        streams_items = request.stream and emit is not None
        _check_stream(request, bucket, streams_items)
        if keep_video_at is not None and destination == "base64" and request.output_type == "auto":
            destination = "kept"
        if streams_items and destination == "base64":
            destination = "streamed"  # the segments are the video
        # choose_destination picks "s3" only with a bucket
        upload_bucket = bucket if destination == "s3" else None
        if bucket is not None and (upload_bucket is not None or request.stream):
            delivery.check_bucket_address(bucket, self.settings.allow_private_urls)
        timings: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="talking-head-job-") as tmp:
            workdir = Path(tmp)
            clock = time.monotonic()
            control.check()
            progress.report("decode", 0.0)
            audio = self._load_audio(request, workdir)
            image = None if request.image.kind == "preset" else self._load_image(request.image)
            timings["decode"] = time.monotonic() - clock

            clock = time.monotonic()
            control.check()
            progress.report("prepare", PERCENT_AFTER_INPUTS)
            portrait = self._prepare(request, options.mode, image)
            timings["prepare"] = time.monotonic() - clock
            log.info("job %s: portrait ready (%s) in %.2f s", job_id, request.image.field, timings["prepare"])

            video = workdir / "video.mp4"
            inline_limit = self.settings.max_inline_result_bytes if destination == "base64" else None
            guard = _StepGuard(job_id, control, progress, video, inline_limit)
            with contextlib.ExitStack() as cleanup:
                sinks = None
                if request.stream:
                    backend = self.loaded_backend
                    plan = SegmentPlan.for_batches(backend.frame_batches(options.mode), backend.fps)
                    playlist = self._bucket_playlist(bucket, job_id, plan)
                    if playlist is not None:
                        cleanup.callback(playlist.close)
                        progress.report_playlist(playlist.url)
                    sinks = SegmentSinks(workdir / "segments", plan, emit if streams_items else None, playlist)
                num_frames = self._render(options, portrait, audio, video, guard, timings, sinks)
                if sinks is not None:
                    sinks.finish(video if destination != "streamed" else None)

            size = video.stat().st_size if video.exists() else sinks.bytes if sinks is not None else 0
            clock = time.monotonic()
            control.check()
            if upload_bucket is not None:
                progress.report("upload", PERCENT_AFTER_GENERATE)
                delivered = delivery.upload_result(
                    video, job_id, upload_bucket, self.settings.url_expiry_seconds,
                    self.settings.upload_timeout_seconds, self.settings.allow_private_urls,
                )
            elif destination == "base64":
                delivery.check_inline_size(size, self.settings.max_inline_result_bytes)
                delivered = delivery.inline_result(video)
            else:
                delivered = {}
            if keep_video_at is not None:
                shutil.move(video, keep_video_at)
            timings["upload"] = time.monotonic() - clock

        # One job at a time holds the device from its start to its result: that is what it costs.
        backend = self.loaded_backend
        held_seconds = round(time.monotonic() - started, 3)
        streamed: dict[str, Any] = {}
        if sinks is not None:
            streamed["segments"] = sinks.segments
            if sinks.playlist is not None:
                streamed.update(playlist_url=sinks.playlist.url, playlist_expires_at=sinks.playlist.expires_at)
        return {
            "success": True,
            "request_id": job_id,
            **delivered,
            **streamed,
            "generation_time_seconds": held_seconds,
            "file_size_bytes": size,
            "duration_seconds": round(num_frames / backend.fps, 3),
            "fps": backend.fps,
            "width": portrait.width,
            "height": portrait.height,
            "num_frames": num_frames,
            "model": backend.name,
            "seed": request.seed,
            "mode": options.mode,
            "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "gpu": self.device,
            "gpu_seconds": held_seconds,
        }

    def _options(self, request: JobRequest) -> GenerationOptions:
        """The job's generation options, once the backend has accepted them (else INVALID_INPUT)."""
        try:
            backend_options = self.loaded_backend.parse_options(request.backend_fields, request.mode)
        except InvalidOptionError as error:
            message = str(error)
            if error.field not in message:
                message = f"{error.field}: {message}"
            raise JobError(ErrorCode.INVALID_INPUT, message) from None
        return GenerationOptions(
            seed=request.seed, mode=request.mode, prompt=request.prompt, backend_options=backend_options
        )

    def _load_audio(self, request: JobRequest, workdir: Path) -> DecodedAudio:
        data = self._read_source(request.audio)
        return decode_audio(data, request.audio.field, workdir, request.max_duration_seconds)

    def _load_image(self, source: MediaSource):
        return decode_image(self._read_source(source), source.field, self.settings.max_image_pixels)

    def _read_source(self, source: MediaSource) -> bytes:
        if source.kind == "url":
            return fetch_url(
                source.value, source.field, self.settings.max_input_bytes,
                self.settings.fetch_timeout_seconds, self.settings.allow_private_urls,
            )
        return decode_base64(source.value, source.field, self.settings.max_input_bytes)

    def _prepare(self, request: JobRequest, mode: str, image) -> PreparedPortrait:
        backend = self.loaded_backend
        max_area = request.max_area or backend.default_max_area(mode)
        if request.image.kind == "preset":
            if self.presets is None:
                raise JobError(
                    ErrorCode.INVALID_INPUT,
                    "avatar_id was given but this endpoint has no presets (PRESET_AVATARS_DIR); send image_file.",
                )
            return self.presets.prepared(request.image.value, max_area)
        try:
            return backend.prepare_portrait(image, max_area)
        except NoFaceError as error:
            raise JobError(ErrorCode.NO_FACE, f"{request.image.field}: {error}") from None

    def _bucket_playlist(self, bucket: BucketSettings | None, job_id: str, plan: SegmentPlan) -> BucketPlaylist | None:
        if bucket is None:
            return None
        return BucketPlaylist(
            bucket, job_id, plan, self.loaded_backend.fps,
            self.settings.url_expiry_seconds, self.settings.upload_timeout_seconds, self.settings.allow_private_urls,
        )

    def _render(
        self, options: GenerationOptions, portrait: PreparedPortrait, audio: DecodedAudio, video: Path,
        guard: _StepGuard, timings: dict[str, float], sinks: SegmentSinks | None,
    ) -> int:
        """Generate and encode together; returns the number of frames written.

        With `sinks` (a stream job) the frames become segments, handed to the sinks as each is
        complete, in the sinks' folder; else they become the MP4 `video`.
        """
        backend = self.loaded_backend
        expected = num_frames_for(audio.speech.duration_seconds, backend.fps)
        encode_seconds = 0.0
        clock = time.monotonic()
        writer: FfmpegEncoder
        if sinks is None:
            writer = Mp4Writer(video, portrait.width, portrait.height, backend.fps, audio.mux_wav)
        else:
            writer = SegmentWriter(sinks.directory, portrait.width, portrait.height, backend.fps,
                                   audio.mux_wav, expected, sinks.plan, sinks)
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
        timings["generate"] = time.monotonic() - clock - encode_seconds
        timings["encode"] = encode_seconds
        return writer.frames_written


def _check_stream(request: JobRequest, bucket: BucketSettings | None, streams_items: bool) -> None:
    """A `stream` job needs somewhere to send segments: /stream/{id} or a bucket."""
    if not request.stream:
        return
    if not streams_items and bucket is None:
        raise JobError(
            ErrorCode.INVALID_INPUT,
            "stream is true, but this endpoint can neither send segments through /stream/{id} "
            "(set STREAM_RESULTS=1 on the endpoint) nor put them in a bucket (set the BUCKET_* variables "
            "or send s3Config); send the job without stream to get the whole video at the end.",
        )
    if streams_items and request.output_type == "base64":
        raise JobError(
            ErrorCode.INVALID_INPUT,
            "output_type 'base64' with stream true would send the video twice, and the last stream item "
            "cannot hold it (RunPod's 1 MB limit); use output_type 'auto' (segments only, or also an "
            "uploaded MP4 when a bucket is set) or 's3'.",
        )


class _StepGuard:
    """What runs between two steps of generation: the stop check, progress, the inline size check.

    The backends call `on_progress` once per diffusion step or frame batch, so a stop asked for
    (JobCancelled) ends generation at the next step; the size check stops a video bound for the
    inline result as soon as it is certain not to fit (the MP4 only grows as it is written).
    """

    def __init__(
        self, job_id: str, control: JobControl, progress: ProgressReporter, video: Path, inline_limit: int | None,
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
            delivery.check_inline_size(self._video.stat().st_size, self._inline_limit, so_far)
