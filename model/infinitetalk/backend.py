"""`MODEL_BACKEND=infinitetalk`: InfiniteTalk (Wan2.1-I2V-14B + its audio modules) behind the
worker's TalkingHeadBackend interface.

`load` finds (or fetches) the weights and loads every model once, placed for the memory mode;
`generate` runs the reference's clip chaining (pipeline.py) and yields each clip's new frames as
soon as it is decoded. One or two speakers, a portrait or a video to dub:

- one speaker: the single/ weights; two: the multi/ weights, swapped in for that job, and each
  speaker's region in the frame (the default split, or the job's `speaker_boxes`);
- a video: each clip is conditioned on the video's frame where the clip starts, the last frame
  held past the video's end; frames are read in order from the video and only the current one
  kept, so memory stays flat in the video's length.

`fast` is the README's 4-step setting with the lightx2v LoRA attached beside the weights
(lora.py): without it, fast jobs fail with MODEL_UNAVAILABLE and quality jobs go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.base import (
    DEFAULT_PROMPT,
    SPEECH_SAMPLE_RATE,
    GenerationOptions,
    InvalidOptionError,
    ModelUnavailableError,
    PreparedPortrait,
    ProgressCallback,
    SourceVideo,
    Speech,
    fit_to_area,
    num_frames_for,
)
from model.face_check import FaceCheck
from model.torch_backend import load_failures_as_host_unfit
from model.wan_common.frames import to_pixels, to_uint8_frames
from model.wan_common.lora import LoraAdapter
from model.wan_common.memory import (
    MemoryMode,
    smaller_mode_advice,
)
from model.wan_common.placement import (
    MemoryModeBackend,
    execution_target,
    place_transformer,
    text_encoder_compute_device,
    text_encoder_home,
)
from model.wan_common.progress import ProgressClock
from model.wan_common.text import PromptCache
from model.weights import ensure

from .config import DEFAULT_SIZE_BUCKET, FPS, NEGATIVE_PROMPT, SAMPLE_SHIFT, VAE_STRIDE
from .declaration import (
    BASE_WEIGHTS,
    DECLARATION,
    INFINITETALK_WEIGHTS,
    LORA_FILE,
    LORA_WEIGHTS,
    MEMORY_MODE_SETTING,
    WAV2VEC_WEIGHTS,
)
from .layout import bucket_size, cover_and_crop, speaker_regions
from .loader import InfiniteTalkComponents, WeightFolders, load_components
from .lora import attach_lightx2v_lora
from .memory import FP8_BLOCK_LAYERS, MIN_FREE_BYTES
from .options import Box, InfiniteTalkOptions, check_boxes
from .pipeline import FAST, QUALITY, Prompts, Sampling, generate_clips, pad_speech_end, plan_clips
from .transformer import MAX_SPEAKERS

log = logging.getLogger(__name__)

# sizes are multiples of the VAE's 8 and the patch's 2
SIZE_MULTIPLE = VAE_STRIDE[1] * 2
PROMPT_CACHE_SIZE = 16
FAST_MODE = "fast"
LARGE_BUCKET = "infinitetalk-720"


@dataclasses.dataclass(frozen=True)
class InfiniteTalkPortrait:
    """A portrait covered and cropped to the video size: [3, H, W] in [-1, 1]; `source_size` is the
    portrait's own (height, width), where speaker boxes are given; `bucket` the size bucket."""

    pixels: torch.Tensor
    source_size: tuple[int, int]
    bucket: str


def video_size(height: int, width: int, max_area: int) -> tuple[str, int, int]:
    """(size bucket, height, width) of the video for a portrait: the reference's bucket size (the
    720 bucket's when it fits `max_area`, else the 480 one's), scaled down to fit `max_area`."""
    large = bucket_size(height, width, LARGE_BUCKET)
    if large[0] * large[1] <= max_area:
        return LARGE_BUCKET, *large
    target_h, target_w = bucket_size(height, width, DEFAULT_SIZE_BUCKET)
    if target_h * target_w > max_area:
        target_w, target_h = fit_to_area(target_w, target_h, max_area, SIZE_MULTIPLE)
    return DEFAULT_SIZE_BUCKET, target_h, target_w


class InfiniteTalkBackend(MemoryModeBackend):
    declaration = DECLARATION
    name = "infinitetalk"

    def __init__(
        self, components: InfiniteTalkComponents, device: torch.device, memory_mode: MemoryMode,
        lora: LoraAdapter | ModelUnavailableError,
    ) -> None:
        """`lora` is the fast mode's adapter, or why the fast mode is unavailable."""
        self.components = components
        self._device = device
        self.memory_mode = memory_mode
        self.lora = lora
        self.text_device = text_encoder_compute_device(memory_mode, device)
        self._prompts = PromptCache(PROMPT_CACHE_SIZE)
        self._faces = FaceCheck()

    @classmethod
    def load(cls, model_dir: Path, settings: Mapping[str, Any]) -> InfiniteTalkBackend:
        """Find (or fetch) the weights and load every model once, in the memory mode WAN_MEMORY_MODE
        names (None: the largest that fits the GPU). Raises ModelUnavailableError."""
        started = time.monotonic()
        folders = WeightFolders(
            base=ensure(BASE_WEIGHTS, model_dir),
            wav2vec=ensure(WAV2VEC_WEIGHTS, model_dir),
            infinitetalk=ensure(INFINITETALK_WEIGHTS, model_dir),
        )
        lora_file = _find_lora(model_dir)
        device, dtype, mode = execution_target(
            "InfiniteTalk (Wan2.1-I2V-14B)", folders.base, settings.get(MEMORY_MODE_SETTING), MIN_FREE_BYTES)
        too_big = (
            f"the InfiniteTalk models do not fit in this GPU's free memory in memory mode {mode.value!r}; "
            + smaller_mode_advice(mode)
        )
        with load_failures_as_host_unfit("InfiniteTalk", folders.base, too_big):
            # only the full mode reads the transformer straight onto the GPU; the others prepare it
            # on the CPU (cast to fp8, or pinned for streaming)
            load_device = device if mode is MemoryMode.FULL else torch.device("cpu")
            image_dtype = torch.float16 if device.type == "cuda" else torch.float32
            components = load_components(folders, load_device, dtype, image_dtype)
            lora = lora_file if isinstance(lora_file, ModelUnavailableError) else attach_lightx2v_lora(
                components.transformer, lora_file
            )
            place_transformer(components.transformer, mode, device, FP8_BLOCK_LAYERS)
            components.text_encoder.model.to(text_encoder_home(mode, device))
            for model in (components.vae, components.image_encoder, components.speech_encoder.model):
                model.to(device)
        backend = cls(components, device, mode, lora)
        for prompt in (DEFAULT_PROMPT, NEGATIVE_PROMPT):
            backend.encode_prompt(prompt)
        log.info(
            "InfiniteTalk ready on %s (%s, memory mode %s) in %.1f s",
            device, str(dtype).removeprefix("torch."), mode.value, time.monotonic() - started,
        )
        return backend

    @property
    def device(self) -> torch.device:
        return self._device

    def parse_options(self, fields: Mapping[str, Any], mode: str) -> InfiniteTalkOptions:
        options = super().parse_options(fields, mode)
        assert isinstance(options, InfiniteTalkOptions)
        if mode == FAST_MODE and isinstance(self.lora, ModelUnavailableError):
            raise self.lora
        return options

    def prepare_portrait(self, image: np.ndarray, max_area: int) -> PreparedPortrait:
        """The portrait covered and cropped to its size bucket. Raises NoFaceError without a face:
        the model would animate any picture, and nothing would be speaking."""
        self._faces.require_face(image)
        bucket, height, width = video_size(image.shape[0], image.shape[1], max_area)
        pixels = to_pixels(cover_and_crop(image, (height, width)))
        portrait = InfiniteTalkPortrait(pixels, (image.shape[0], image.shape[1]), bucket)
        return PreparedPortrait(width=width, height=height, features=portrait)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """umT5 states [1, text_len, dim] on the CPU; the last PROMPT_CACHE_SIZE are kept."""
        return self._prompts.get(prompt, self._encode_text)

    def _encode_text(self, prompt: str) -> torch.Tensor:
        encoder = self.components.text_encoder
        home = encoder.model.device
        encoder.model.to(self.text_device)  # where the memory mode lets it compute
        try:
            return encoder.encode([prompt]).cpu()
        finally:
            encoder.model.to(home)

    def generate(
        self,
        portrait: PreparedPortrait,
        speech: Speech,
        options: GenerationOptions,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        features: InfiniteTalkPortrait = portrait.features
        own = options.backend_options
        if not isinstance(own, InfiniteTalkOptions):  # options not made by parse_options: all defaults
            own = InfiniteTalkOptions()
        speeches = options.speakers or (speech,)
        boxes = own.boxes()
        check_boxes(boxes, len(speeches), features.source_size[1], features.source_size[0])
        self._check_can_run(options.mode, len(speeches))
        frames = num_frames_for(speech.duration_seconds, FPS)
        with self.out_of_memory_as_job_error():
            speech_features = [self._speech_features(one, frames) for one in speeches]
            prompts = Prompts(
                self.encode_prompt(options.prompt).to(self.device), self.encode_prompt(NEGATIVE_PROMPT).to(self.device)
            )
            regions = None
            if len(speeches) == 2:
                regions = _regions(features, portrait.height, portrait.width, boxes)
            conditioning = _conditioning_frames(features, options.source_video, portrait.height, portrait.width)
            sampling = self._sampling(options.mode, features.bucket)
            clips = len(plan_clips(frames).starts)
            clock = ProgressClock(clips * sampling.steps, on_progress)
            self.components.speaker_weights.use(len(speeches))
            lora = self.lora if options.mode == FAST_MODE else None
            assert not isinstance(lora, ModelUnavailableError)  # _check_can_run
            with lora.active() if lora is not None else contextlib.nullcontext():
                for clip in generate_clips(
                    self.components.transformer, self.components.vae, self.components.image_encoder.encode,
                    conditioning, prompts, speech_features, sampling, options.seed, speaker_regions=regions,
                    on_step=lambda clip, step: clock.tick(f"clip {clip + 1} of {clips}, step {step + 1}"),
                    device=self._device,
                ):
                    yield to_uint8_frames(clip[None])

    def _check_can_run(self, mode: str, speakers: int) -> None:
        if mode == FAST_MODE and isinstance(self.lora, ModelUnavailableError):
            raise self.lora
        if not 1 <= speakers <= MAX_SPEAKERS:
            raise InvalidOptionError("audio_file_2", f"InfiniteTalk animates one or two speakers, not {speakers}.")
        if speakers == 2 and self.memory_mode is MemoryMode.OFFLOAD:
            raise ModelUnavailableError(
                "two-speaker jobs swap in InfiniteTalk's multi/ weights, which the offload memory mode "
                f"cannot do; set {MEMORY_MODE_SETTING}=fp8 or full on a GPU with more memory"
            )

    def _sampling(self, mode: str, bucket: str) -> Sampling:
        if mode == FAST_MODE:
            return FAST
        return dataclasses.replace(QUALITY, shift=SAMPLE_SHIFT[bucket])

    def _speech_features(self, speech: Speech, frames: int) -> torch.Tensor:
        """One speaker's wav2vec2 rows, one per video frame, `frames` of them (the reference's
        int(seconds * 25) rows, its end mirrored up to the video's rounded length)."""
        samples = speech.samples
        one_frame = int(np.ceil(SPEECH_SAMPLE_RATE / FPS))
        if len(samples) < one_frame:
            samples = np.pad(samples, (0, one_frame - len(samples)))
        rows = self.components.speech_encoder.encode(samples, FPS)
        return pad_speech_end(rows, frames)[:frames]


def _regions(portrait: InfiniteTalkPortrait, height: int, width: int, boxes: tuple[Box, Box] | None) -> torch.Tensor:
    # the layout takes (row, column) corners, as the reference reads its boxes; ours say x across
    layout_boxes = None if boxes is None else [(y0, x0, y1, x1) for x0, y0, x1, y1 in boxes]
    latent = (height // VAE_STRIDE[1], width // VAE_STRIDE[2])
    return speaker_regions(portrait.source_size, (height, width), latent, layout_boxes)


def _conditioning_frames(
    portrait: InfiniteTalkPortrait, video: SourceVideo | None, height: int, width: int
) -> Callable[[int], torch.Tensor]:
    """The frame conditioning the clip that starts at a video frame: the portrait, or the video's."""
    if video is None:
        return lambda start: portrait.pixels
    return VideoFrames(video, height, width, portrait.pixels).at


class VideoFrames:
    """A source video's frames at FPS, read in order as clips ask for later ones; only the current
    frame is kept. Past the video's end the last frame is held (the reference's choice)."""

    def __init__(self, video: SourceVideo, height: int, width: int, first: torch.Tensor) -> None:
        self._frames = video.frames(FPS)
        self._size = (height, width)
        self._index = -1
        self._current = first
        self._ended = False

    def at(self, index: int) -> torch.Tensor:
        if index < self._index:
            raise ValueError(f"video frames are read in order: frame {index} after frame {self._index}")
        latest = None
        while self._index < index and not self._ended:
            frame = next(self._frames, None)
            if frame is None:
                self._ended = True
                break
            self._index += 1
            latest = frame
        if latest is not None:  # the frame at `index`, or the video's last when it ended before
            self._current = to_pixels(cover_and_crop(latest, self._size))
        return self._current




def _find_lora(model_dir: Path) -> Path | ModelUnavailableError:
    """The fast mode's LoRA file, or why there is none (the quality mode works without it)."""
    try:
        return ensure(LORA_WEIGHTS, model_dir) / LORA_FILE
    except ModelUnavailableError as error:
        log.warning("mode 'fast' is unavailable: %s", error)
        return error

