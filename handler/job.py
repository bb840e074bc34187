"""One job, start to finish: input → media → model → MP4 → delivery → result (docs/CONTRACT.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from handler import delivery
from handler.cancel import JobCancelled, JobControl
from handler.delivery_plan import DeliveryPlan, Destination, plan_delivery
from handler.downloads import DownloadSlot
from handler.errors import FRESH_WORKER_CODES, ErrorCode, JobError, contract_error, from_model_error
from handler.fetch import fetch_url
from handler.media import DecodedAudio, check_duration, decode_audio, decode_base64, decode_image
from handler.presets import PresetAvatars
from handler.progress import PERCENT_AFTER_GENERATE, PERCENT_AFTER_INPUTS, ProgressReporter
from handler.render import StepGuard, render
from handler.schema import SHARED_FIELDS, JobRequest, MediaSource, check_backend_inputs, parse_job
from handler.scratch import check_free_space, scratch_folder
from handler.segments import SegmentPlan
from handler.settings import WorkerSettings
from handler.source_video import VideoLimits, open_source_video
from handler.speakers import lay_out, write_wav
from handler.streaming import BucketPlaylist, SegmentSinks, StreamItem
from model.base import GenerationOptions, NoFaceError, PreparedPortrait, TalkingHeadBackend
from model.speed import estimate

log = logging.getLogger(__name__)

# The fields a live session's portrait takes (docs/CONTRACT.md, "Live sessions"); its speech arrives on the stream.
LIVE_PORTRAIT_FIELDS = frozenset({"image_file", "image_url", "avatar_id", "resolution", "seed", "mode"})
# Stands in for the speech a live session has none of, so that its fields are judged by the job's own schema.
_NO_SPEECH = {"audio_file": "-"}


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
    #: held while the backend prepares a portrait: a job's and a live session's may come at once, and a
    #: backend's face models (one interpreter) are not shared between threads
    portrait_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

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
        self, job: dict[str, Any], control: JobControl | None = None, download_slot: DownloadSlot | None = None,
        emit: Callable[[StreamItem], None] | None = None,
    ) -> dict[str, Any]:
        """Run one job. Never raises: failures become `{"error": "CODE: sentence"}`.

        `control` stops the job at its next step when asked to (handler/cancel.py). With
        `download_slot` (the always-on server, which serves the file itself) a finished MP4 is
        moved there, and `output_type` "auto" without a bucket keeps it there only, neither
        inline nor uploaded; "base64" and "s3" deliver it as well. `emit` (a generator handler,
        STREAM_RESULTS) takes a `stream` job's segments as stream items while it renders; the
        video is then not also sent inline.
        """
        job_id = str(job.get("id") or "local")
        control = control or JobControl()
        try:
            return self._outcome(job, job_id, control, download_slot, emit)
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
        self, job: dict[str, Any], job_id: str, control: JobControl, download_slot: DownloadSlot | None,
        emit: Callable[[StreamItem], None] | None,
    ) -> dict[str, Any]:
        """The job's result, or its failure as the contract's error (JobCancelled passes through)."""
        started = time.monotonic()
        try:
            if self.startup_error is not None:
                raise self.startup_error
            result, destination = self._run(job, job_id, started, control, download_slot, emit)
        except Exception as error:  # noqa: BLE001 - the worker must survive anything a job does
            return self._failure(job_id, error)
        log.info("job %s done in %.2f s: %dx%d, %d frames, %d bytes, %s", job_id,
                 result["generation_time_seconds"], result["width"], result["height"], result["num_frames"],
                 result["file_size_bytes"], destination)
        return result

    def _failure(self, job_id: str, error: Exception) -> dict[str, Any]:
        """What a job raised, as the contract's error; called while it is being handled."""
        translated = self.backend.translate_error(error) if self.backend is not None else error
        failure = contract_error(translated)
        if failure is not None:
            log.info("job %s failed: %s", job_id, failure)
            if failure.code not in FRESH_WORKER_CODES:
                return {"error": str(failure)}
            log.error("job %s failed %s; asking for a fresh worker", job_id, failure.code.value)
            return {"error": str(failure), "refresh_worker": True}
        log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
        message = ("the worker hit an unexpected error; it was logged with the job id. "
                   "Retry, and report it if it persists.")
        output: dict[str, Any] = {"error": str(JobError(ErrorCode.INTERNAL, message))}
        if self.backend is not None and self.backend.needs_fresh_worker(error):
            output["refresh_worker"] = True
        return output

    def _run(
        self, job: dict[str, Any], job_id: str, started: float, control: JobControl, download_slot: DownloadSlot | None,
        emit: Callable[[StreamItem], None] | None,
    ) -> tuple[dict[str, Any], Destination]:
        request = parse_job(job, self.settings.max_audio_seconds, self.default_mode)
        # Before any media is fetched or decoded: a job that cannot succeed costs nothing.
        options = self._options(request)
        plan = self._plan(request, sends_stream_items=emit is not None, kept_by_server=download_slot is not None)
        stages = _Stages(job_id, control, ProgressReporter(job))
        with scratch_folder() as workdir, contextlib.ExitStack() as inputs:
            check_free_space(workdir, request, self.settings)  # before any input is fetched or written
            with stages.run("decode", percent=0.0):
                audio, options = self._load_speech(request, options, workdir)
                self._check_time_budget(request, options.mode, audio)
                options = self._load_video(request, options, workdir, inputs)
                image = self._portrait_image(request, options)
            with stages.run("prepare", percent=PERCENT_AFTER_INPUTS):
                portrait = self._prepare(request, options.mode, image)
            log.info("job %s: portrait ready (%s) in %.2f s", job_id, request.image.field, stages.timings["prepare"])
            video = self._render(plan, options, portrait, audio, workdir / "video.mp4", stages, emit)
            with stages.run("upload"):
                delivered = self._deliver(plan, video, stages)
                if download_slot is not None:
                    download_slot.keep(video.path)
        # One job at a time holds the device from its start to its result: that is what it costs.
        held_seconds = round(time.monotonic() - started, 3)
        return self._result(job_id, request, options, video, delivered, stages.timings, held_seconds), plan.destination

    def _options(self, request: JobRequest) -> GenerationOptions:
        """The job's generation options, once the backend has accepted them and the inputs it was
        sent (else InvalidOptionError, or JobError naming a video or second speech it does not take)."""
        backend = self.loaded_backend
        check_backend_inputs(request, backend.declaration.inputs, backend.name)
        backend_options = backend.parse_options(request.backend_fields, request.mode)
        return GenerationOptions(
            seed=request.seed, mode=request.mode, prompt=request.prompt, backend_options=backend_options
        )

    def _plan(self, request: JobRequest, sends_stream_items: bool, kept_by_server: bool) -> DeliveryPlan:
        plan = plan_delivery(
            request.output_type, request.stream, request.s3_override, self.settings.bucket,
            sends_stream_items=sends_stream_items, kept_by_server=kept_by_server,
            max_inline_result_bytes=self.settings.max_inline_result_bytes,
        )
        if plan.bucket is not None:
            delivery.check_bucket_address(plan.bucket, self.settings.allow_private_urls)
        return plan

    def _check_time_budget(self, request: JobRequest, mode: str, audio: DecodedAudio) -> None:
        """Before the portrait and the model: a job that cannot finish within the endpoint's
        execution timeout is refused, with the longest speech that would (model/speed.py)."""
        budget = self.settings.execution_timeout_seconds
        if budget is None:
            return
        backend = self.loaded_backend
        area = request.max_area or backend.default_max_area(mode)
        expected = estimate(backend.declaration, mode, area, self.device, backend.memory_mode_name)
        if expected.seconds(audio.duration_seconds) <= budget:
            return
        longest = expected.longest_speech(budget)
        raise JobError(ErrorCode.TOO_LARGE, (
            f"{request.speech_fields}: the speech is {audio.duration_seconds:.1f} s, and this endpoint's execution "
            f"timeout (EXECUTION_TIMEOUT_SECONDS={budget}) fits at most {longest:.1f} s of it in mode {mode} at up "
            f"to {area} pixels ({expected.overhead_seconds:.0f} s + {expected.seconds_per_video_second:.3g} s per "
            f"second of speech, {expected.basis}); send at most {longest:.1f} s of speech or a smaller resolution, "
            "or raise the endpoint's execution timeout and EXECUTION_TIMEOUT_SECONDS with it."
        ))

    def _load_speech(
        self, request: JobRequest, options: GenerationOptions, workdir: Path,
    ) -> tuple[DecodedAudio, GenerationOptions]:
        """The job's speech; with a second speaker, both laid out by `speaker_timing`, the options'
        `speakers` their tracks and the job's speech their mix (handler/speakers.py)."""
        first = self._load_audio(request.audio, request, workdir)
        if request.audio_2 is None:
            return first, options
        second_folder = workdir / "speaker-2"
        second_folder.mkdir()
        second = self._load_audio(request.audio_2, request, second_folder)
        layout = lay_out(first.speech, second.speech, request.speaker_timing)
        laid_out = f"{request.speech_fields} laid out as speaker_timing {request.speaker_timing!r}"
        check_duration(layout.mix.duration_seconds, laid_out, request.max_duration_seconds)
        mix = DecodedAudio(layout.mix, write_wav(layout.mix, workdir / "speakers-mix.wav"),
                           layout.mix.duration_seconds)
        return mix, dataclasses.replace(options, speakers=layout.tracks)

    def _load_audio(self, source: MediaSource, request: JobRequest, workdir: Path) -> DecodedAudio:
        data = self._read_source(source)
        return decode_audio(data, source.field, workdir, request.max_duration_seconds)

    def _load_video(
        self, request: JobRequest, options: GenerationOptions, workdir: Path, cleanup: contextlib.ExitStack,
    ) -> GenerationOptions:
        """The options with the job's video to dub (its decoders ended by `cleanup`); unchanged without one."""
        source = request.video
        if source is None:
            return options
        data = self._read_source(source, self.settings.max_video_bytes)
        limits = VideoLimits(self.settings.max_video_seconds, self.settings.max_video_pixels)
        video = cleanup.enter_context(open_source_video(data, source.field, workdir, limits))
        return dataclasses.replace(options, source_video=video)

    def _portrait_image(self, request: JobRequest, options: GenerationOptions) -> np.ndarray | None:
        """The portrait to prepare: the video's first frame, the job's image, or None for a preset."""
        if options.source_video is not None:
            return options.source_video.first_frame()
        return None if request.image.kind == "preset" else self._load_image(request.image)

    def _load_image(self, source: MediaSource) -> np.ndarray:
        return decode_image(self._read_source(source), source.field, self.settings.max_image_pixels)

    def _read_source(self, source: MediaSource, max_bytes: int | None = None) -> bytes:
        """The bytes of a base64 or URL input, at most `max_bytes` (default MAX_INPUT_BYTES)."""
        limit = self.settings.max_input_bytes if max_bytes is None else max_bytes
        if source.kind == "url":
            return fetch_url(source.value, source.field, limit, self.settings.fetch_timeout_seconds,
                             self.settings.allow_private_urls)
        return decode_base64(source.value, source.field, limit)

    def _prepare(self, request: JobRequest, mode: str, image: np.ndarray | None) -> PreparedPortrait:
        backend = self.loaded_backend
        max_area = request.max_area or backend.default_max_area(mode)
        if request.image.kind == "preset":
            if self.presets is None:
                raise JobError(
                    ErrorCode.INVALID_INPUT,
                    "avatar_id was given but this endpoint has no presets (PRESET_AVATARS_DIR); send image_file.",
                )
            with self.portrait_lock:
                return self.presets.prepared(request.image.value, max_area)
        assert image is not None, "a job's own portrait is decoded before it is prepared"
        try:
            with self.portrait_lock:
                return backend.prepare_portrait(image, max_area)
        except NoFaceError as error:
            if request.video is not None:
                raise JobError(ErrorCode.NO_FACE, (
                    f"{request.video.field}: the video's first frame has no face to animate ({error}); send a "
                    "video whose first frame shows the face.")) from None
            raise from_model_error(error, request.image.field) from None

    def live_request(self, fields: Mapping[str, Any]) -> JobRequest:
        """A live session's portrait fields judged as a job's (handler/schema.py), with no media work.

        Raises JobError(INVALID_INPUT) naming a field a session does not take (its speech arrives on
        the stream; it has no output to deliver) or a field with a bad value.
        """
        if self.startup_error is not None:
            raise self.startup_error
        for name in fields:
            if name in SHARED_FIELDS and name not in LIVE_PORTRAIT_FIELDS:
                raise JobError(ErrorCode.INVALID_INPUT, (
                    f"{name} is a field of a rendering job, not of a live session: a session's speech arrives on "
                    f"its stream and its video leaves on it. Leave {name} out; a session takes "
                    f"{', '.join(sorted(LIVE_PORTRAIT_FIELDS))}."))
        request = parse_job({"input": {**fields, **_NO_SPEECH}}, self.settings.max_audio_seconds, self.default_mode)
        self._options(request)  # the backend's own fields, refused by name before any media work
        return request

    def live_options(self, fields: Mapping[str, Any]) -> GenerationOptions:
        """The generation options of a live session with these portrait fields (see `live_request`)."""
        return self._options(self.live_request(fields))

    def prepare_live_portrait(self, fields: Mapping[str, Any]) -> PreparedPortrait:
        """A live session's portrait: `fields` (image_file / image_url / avatar_id, resolution, seed,
        mode) parsed, fetched, decoded and prepared with a job's schema, guards and limits.

        Blocks (fetches, decodes, runs the face models under `portrait_lock`): call it in a thread.
        Raises JobError: a field a session does not take, a bad value, a fetch that fails, no face.
        """
        request = self.live_request(fields)
        image = None if request.image.kind == "preset" else self._load_image(request.image)
        return self._prepare(request, request.mode, image)

    def _render(
        self, plan: DeliveryPlan, options: GenerationOptions, portrait: PreparedPortrait, audio: DecodedAudio,
        path: Path, stages: _Stages, emit: Callable[[StreamItem], None] | None,
    ) -> _Video:
        """Generate and encode: the MP4 at `path`, and a stream job's segments, out as each is made."""
        guard = StepGuard(stages.job_id, stages.control, stages.progress, path, plan.inline_limit)
        with contextlib.ExitStack() as cleanup:
            sinks = self._segment_sinks(plan, options.mode, path.parent / "segments", stages, emit, cleanup)
            rendered = render(self.loaded_backend, portrait, audio, options, path, sinks, guard)
            if sinks is not None:
                sinks.finish(path if plan.makes_mp4 else None)
        stages.timings.update(generate=rendered.generate_seconds, encode=rendered.encode_seconds)
        streamed: dict[str, Any] = {}
        if sinks is not None:
            streamed["segments"] = sinks.segments
            if sinks.playlist is not None:
                streamed.update(playlist_url=sinks.playlist.url, playlist_expires_at=sinks.playlist.expires_at)
        size = path.stat().st_size if path.exists() else sinks.bytes if sinks is not None else 0
        return _Video(path, rendered.num_frames, rendered.width, rendered.height, size, streamed)

    def _segment_sinks(
        self, plan: DeliveryPlan, mode: str, directory: Path, stages: _Stages,
        emit: Callable[[StreamItem], None] | None, cleanup: contextlib.ExitStack,
    ) -> SegmentSinks | None:
        """Where a stream job's segments go: /stream items, the bucket's playlist (closed by
        `cleanup`), or both."""
        if not plan.streams:
            return None
        backend = self.loaded_backend
        fps = backend.frame_rate(mode)
        segment_plan = SegmentPlan.for_batches(backend.frame_batches(mode), fps)
        playlist = None
        if plan.playlist_bucket is not None:
            playlist = BucketPlaylist(
                plan.playlist_bucket, stages.job_id, segment_plan, fps, self.settings.url_expiry_seconds,
                self.settings.upload_timeout_seconds, self.settings.allow_private_urls,
            )
            cleanup.callback(playlist.close)
            stages.progress.report_playlist(playlist.url)
        return SegmentSinks(directory, segment_plan, emit if plan.segment_items else None, playlist)

    def _deliver(self, plan: DeliveryPlan, video: _Video, stages: _Stages) -> dict[str, Any]:
        """The result's fields that carry the video: its URL, its base64, or none (streamed, kept)."""
        if plan.upload_bucket is not None:
            stages.progress.report("upload", PERCENT_AFTER_GENERATE)
            return delivery.upload_result(
                video.path, stages.job_id, plan.upload_bucket, self.settings.url_expiry_seconds,
                self.settings.upload_timeout_seconds, self.settings.allow_private_urls,
            )
        if plan.inline_limit is not None:
            plan.inline_limit.check(video.file_size_bytes)
            return delivery.inline_result(video.path)
        return {}

    def _result(
        self, job_id: str, request: JobRequest, options: GenerationOptions, video: _Video,
        delivered: dict[str, Any], timings: dict[str, float], held_seconds: float,
    ) -> dict[str, Any]:
        backend = self.loaded_backend
        return {
            "success": True,
            "request_id": job_id,
            **delivered,
            **video.stream_fields,
            "generation_time_seconds": held_seconds,
            "file_size_bytes": video.file_size_bytes,
            "duration_seconds": round(video.num_frames / backend.frame_rate(options.mode), 3),
            "fps": backend.frame_rate(options.mode),
            "width": video.width,
            "height": video.height,
            "num_frames": video.num_frames,
            "model": backend.name,
            "seed": request.seed,
            "mode": options.mode,
            "timings": {stage: round(seconds, 3) for stage, seconds in timings.items()},
            "gpu": self.device,
            "gpu_seconds": held_seconds,
        }


@dataclasses.dataclass(frozen=True)
class _Video:
    """What the render stage made."""

    #: the MP4 (absent when the /stream items are the whole delivery)
    path: Path
    num_frames: int
    width: int
    height: int
    #: the MP4's size, or the segments' total when no MP4 is made
    file_size_bytes: int
    #: the result's `segments`, `playlist_url`, `playlist_expires_at` of a stream job
    stream_fields: dict[str, Any]


class _Stages:
    """A job's stages: each starts with the stop check (and its progress update) and is timed."""

    def __init__(self, job_id: str, control: JobControl, progress: ProgressReporter) -> None:
        self.job_id = job_id
        self.control = control
        self.progress = progress
        #: seconds per stage, in the order they ran (the result's `timings`)
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def run(self, stage: str, percent: float | None = None) -> Iterator[None]:
        clock = time.monotonic()
        self.control.check()
        if percent is not None:
            self.progress.report(stage, percent)
        yield
        self.timings[stage] = time.monotonic() - clock
