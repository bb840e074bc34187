"""Wan2.2-S2V generation: a portrait and speech in, video clips out, one clip at a time.

The steps and their order are the reference's (`wan/speech2video.py`): the prompt and the
negative prompt are encoded once, the portrait to its reference latent, the speech to per-frame
features; then each clip of 80 frames is denoised from its own seeded noise with classifier-free
guidance (negative prompt and silenced speech as the unconditional pass), decoded, and its last
73 frames become the next clip's motion context. That context stays in float32 pixels between
clips, as in the reference: rounding it to 8-bit video would make every clip start from a
slightly wrong past, and long videos drift.

`WanS2VPipeline` is a diffusers `DiffusionPipeline`: the worker builds it from its loader's
components and calls `generate`, and a diffusers user loads a saved folder and calls it. Its
components are `transformer`, `vae`, `text_encoder`, `tokenizer`, `speech_encoder` (wav2vec2 and
its feature extractor) and `scheduler` (UniPC or DPM-Solver++ with flow sigmas: its class picks
the solver and its `flow_shift` the shift; each clip samples on a fresh copy of the reference's
grid). `save_pretrained` writes diffusers' layout (model_index.json, a folder per component) plus
a one-line loader file that imports this class, so that, with this repository on PYTHONPATH:

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    # or, without running the folder's loader file:
    from model.wan_s2v.pipeline import WanS2VPipeline
    pipe = WanS2VPipeline.from_pretrained(folder)

    pipe.to("cuda")
    video = pipe(image=portrait, audio=speech_16khz, prompt="a person speaking", seed=0).frames[0]

The reference runs the transformer and text encoder in bfloat16 and the VAE and wav2vec2 in
float32: `torch_dtype={"default": torch.bfloat16, "vae": torch.float32, "speech_encoder":
torch.float32}`. `loader.save_diffusers_layout` writes such a folder from the official checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from PIL import Image
from transformers import PreTrainedTokenizerBase

from model.base import DEFAULT_MAX_AREA, DEFAULT_PROMPT, SPEECH_SAMPLE_RATE, ProgressCallback, num_frames_for
from model.wan_common.frames import fit_portrait, to_pixels, to_uint8_frames
from model.wan_common.progress import ProgressClock
from model.wan_common.scheduler import make_scheduler
from model.wan_common.text import PromptCache, TextEncoder
from model.wan_common.vae import WanVideoVAE

from .config import (
    DROP_FIRST_MOTION,
    FPS,
    FRAMES_PER_CLIP,
    GUIDANCE_SCALE,
    MOTION_FRAMES,
    NEGATIVE_PROMPT,
    SAMPLE_SHIFT,
    SAMPLE_SOLVER,
    SAMPLE_STEPS,
    SIZE_DIVISOR,
    VAE_STRIDE,
)
from .sizing import video_size
from .speech import SpeechEncoder, bucket_clip_features
from .transformer import WanS2VTransformer3DModel

# Latent frames of the motion context: the VAE keeps the first frame and packs 4 per latent after.
LATENT_MOTION_FRAMES = (MOTION_FRAMES + VAE_STRIDE[0] - 1) // VAE_STRIDE[0]
# Latent frames denoised per clip (the reference's `(infer_frames + 3 + motion_frames) // 4 - ...`).
LATENT_CLIP_FRAMES = (FRAMES_PER_CLIP + VAE_STRIDE[0] - 1 + MOTION_FRAMES) // VAE_STRIDE[0] - LATENT_MOTION_FRAMES
# The first clip is decoded behind the reference latent instead of a motion context, and the
# reference drops its first 3 frames.
FIRST_CLIP_DROPPED_FRAMES = 3 if DROP_FIRST_MOTION else 0
PROMPT_CACHE_SIZE = 32

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "speech_encoder", "scheduler")
# The scheduler classes the sampler has a reference grid for, and the solver each one is.
SOLVER_OF_SCHEDULER = {UniPCMultistepScheduler: "unipc", DPMSolverMultistepScheduler: "dpm++"}
OUTPUT_TYPES = ("np", "pil", "pt")
# The file `save_pretrained` writes beside model_index.json for DiffusionPipeline.from_pretrained.
LOADER_MODULE = "pipeline_wan_s2v"
_LOADER_SOURCE = '''"""Gives DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) WanS2VPipeline.

The pipeline's code is not in this folder: it is the talking-head worker's `model.wan_s2v`
package, which must be importable (its repository on PYTHONPATH).
"""

from model.wan_s2v.pipeline import WanS2VPipeline

__all__ = ["WanS2VPipeline"]
'''


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """The knobs of one job; the defaults are the official ones."""

    num_steps: int = SAMPLE_STEPS
    guidance_scale: float = GUIDANCE_SCALE
    shift: float = SAMPLE_SHIFT
    solver: str = SAMPLE_SOLVER
    negative_prompt: str = NEGATIVE_PROMPT


@dataclasses.dataclass(frozen=True)
class PortraitLatent:
    """The portrait fitted to the video size, encoded once: [1, 16, 1, height/8, width/8]."""

    latent: torch.Tensor
    height: int
    width: int


def clips_for(num_frames: int, reference_clips: int) -> int:
    """Clips to generate for a video of `num_frames`: the reference's count, `reference_clips`.

    The reference counts clips from the speech's features and drops the first clip's first
    FIRST_CLIP_DROPPED_FRAMES frames, so speech that ends just before a clip boundary (about 3 %
    of lengths) is up to that many frames longer than the clips; the reference cuts the video
    there. Cutting would break the contract's video as long as the audio to within one frame, and
    one more clip would cost a whole clip of denoising (40 steps) for 3 frames. `generate` holds
    the last frame over them instead: at most 3 frames, 0.19 s at 16 fps, at the very end, where
    it does not show, for nothing.

    It is never more than 3, i.e. num_frames <= reference_clips * 80: the reference's clips last
    at least as long as the speech less 80 samples (wav2vec2's 400-sample window less its
    320-sample stride), less than the half frame (500 samples) that rounds num_frames up. Tested
    sample by sample; a longer shortfall raises rather than freezes the video.
    """
    held = num_frames - (reference_clips * FRAMES_PER_CLIP - FIRST_CLIP_DROPPED_FRAMES)
    if held > FIRST_CLIP_DROPPED_FRAMES:
        raise ValueError(
            f"{reference_clips} clips give {reference_clips * FRAMES_PER_CLIP - FIRST_CLIP_DROPPED_FRAMES} frames, "
            f"{held} short of {num_frames}: more than the {FIRST_CLIP_DROPPED_FRAMES} frames a hold may cover"
        )
    return reference_clips


@dataclasses.dataclass
class WanS2VPipelineOutput(BaseOutput):
    """`frames[0]` is the video: (n, H, W, 3) floats in [0, 1] for "np", n PIL images for "pil",
    (n, 3, H, W) floats in [0, 1] for "pt"."""

    frames: Any


class WanS2VPipeline(DiffusionPipeline):
    """The loaded models, placed on their devices, and the generation loop over them."""

    # Every component may be left out of __init__'s signature for the worker's form below; the
    # pipeline itself refuses to be built without one.
    _optional_components = list(COMPONENTS)

    def __init__(
        self,
        components: Any = None,
        execution_device: torch.device | str | None = None,
        compute_dtype: torch.dtype | None = None,
        text_device: torch.device | None = None,
        *,
        transformer: WanS2VTransformer3DModel | None = None,
        vae: WanVideoVAE | None = None,
        text_encoder: TextEncoder | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        speech_encoder: SpeechEncoder | None = None,
        scheduler: SchedulerMixin | None = None,
    ) -> None:
        """Two forms. The worker's: `components` (a loader.WanS2VComponents), the transformer's
        execution device and compute dtype (where the memory modes keep its weights elsewhere),
        and `text_device`, where new prompts are encoded, the text encoder visiting it from
        wherever it is kept (default: it runs where it is). Diffusers': the components by name
        (what `from_pretrained` does); the pipeline then runs where the transformer is, in its
        dtype, and the text encoder uses the pipeline's tokenizer and the transformer's text length.
        """
        super().__init__()
        if components is not None:
            transformer, vae = components.transformer, components.vae
            text_encoder, speech_encoder = components.text_encoder, components.speech_encoder
            tokenizer = getattr(text_encoder, "tokenizer", None)
            scheduler = make_scheduler(SAMPLE_SOLVER, SAMPLE_STEPS, SAMPLE_SHIFT)[0]
        else:
            given = dict(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                         speech_encoder=speech_encoder, scheduler=scheduler)
            missing = [name for name, component in given.items() if component is None]
            if missing:
                raise ValueError(
                    f"WanS2VPipeline needs every one of its components {', '.join(COMPONENTS)}; missing: "
                    f"{', '.join(missing)}. Load a complete folder (loader.save_diffusers_layout writes one) or "
                    "pass the missing components to from_pretrained by name."
                )
            assert text_encoder is not None and transformer is not None
            text_encoder.tokenizer = tokenizer
            text_encoder.text_len = transformer.config.text_len
        self.register_modules(
            transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            speech_encoder=speech_encoder, scheduler=scheduler,
        )
        self._placement_device = None if execution_device is None else torch.device(execution_device)
        self._placement_dtype = compute_dtype
        self.text_device = text_device
        self._prompts = PromptCache(PROMPT_CACHE_SIZE)
        self._empty_motion: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        """Where the transformer runs: the worker's execution device, else where its weights are."""
        return self._placement_device or self.transformer.device

    @device.setter
    def device(self, device: torch.device) -> None:
        self._placement_device = device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype: the worker's, else its weights'."""
        return self._placement_dtype or self.transformer.dtype

    # --- saving and loading, in diffusers' layout ---------------------------------------------

    def save_pretrained(self, save_directory: str | Path, **options: Any) -> None:
        """Diffusers' layout, plus the loader file that DiffusionPipeline.from_pretrained needs to
        find this class, which diffusers does not have (`options` are DiffusionPipeline's)."""
        super().save_pretrained(save_directory, **options)
        folder = Path(save_directory)
        index_file = folder / self.config_name
        index = json.loads(index_file.read_text())
        index["_class_name"] = [LOADER_MODULE, type(self).__name__]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (folder / f"{LOADER_MODULE}.py").write_text(_LOADER_SOURCE)

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        # `_class_name` names the folder's loader file, for DiffusionPipeline; loaded through this
        # class, that file is not needed and its code is not run.
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = cls.__name__
        return loaded

    # --- diffusers' entry point ---------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | np.ndarray,
        audio: np.ndarray,
        prompt: str = DEFAULT_PROMPT,
        negative_prompt: str = NEGATIVE_PROMPT,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = SAMPLE_STEPS,
        guidance_scale: float = GUIDANCE_SCALE,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        on_progress: ProgressCallback | None = None,
    ) -> WanS2VPipelineOutput | tuple[Any]:
        """A talking-head video of `image` (RGB) speaking `audio` (mono float samples at 16 kHz),
        exactly as long as the audio, at 16 fps.

        `height`/`width` default to the reference's size for the portrait within 832x480 pixels
        (never larger than the portrait); both must be multiples of 64. Clip i's noise is drawn
        from `seed + i`; `generator` stands for its seed (`initial_seed()`); neither draws one.
        `on_progress(fraction, detail)` is called after every step and decode.
        """
        portrait_pixels = self.check_inputs(
            image, audio, prompt, negative_prompt, height, width, num_inference_steps, guidance_scale, output_type
        )
        if height is None or width is None:
            height, width = video_size(portrait_pixels.shape[0], portrait_pixels.shape[1], DEFAULT_MAX_AREA)
        solver = self.solver
        settings = SamplingSettings(
            num_steps=num_inference_steps, guidance_scale=guidance_scale,
            shift=float(self.scheduler.config.flow_shift), solver=solver, negative_prompt=negative_prompt,
        )
        if seed is None:
            seed = generator.initial_seed() if generator is not None else int(torch.randint(2**31 - 1, ()).item())

        # The prompts are encoded (and cached) here and the portrait's latent made once; then each
        # clip is denoised from its own noise and decoded behind its motion context.
        self.encode_prompt(prompt)
        if guidance_scale > 1:
            self.encode_prompt(negative_prompt)
        portrait = self.encode_portrait(portrait_pixels, height, width)
        clips = self.generate_pixels(
            portrait, np.asarray(audio, dtype=np.float32), seed, prompt, settings, on_progress or _ignore_progress
        )
        video = torch.cat(list(clips), dim=2)

        frames = self._postprocess(video, output_type)
        return WanS2VPipelineOutput(frames=frames) if return_dict else (frames,)

    def check_inputs(
        self,
        image: Image.Image | np.ndarray,
        audio: np.ndarray,
        prompt: str,
        negative_prompt: str,
        height: int | None,
        width: int | None,
        num_inference_steps: int,
        guidance_scale: float,
        output_type: str,
    ) -> np.ndarray:
        """Refuse what the pipeline cannot run, naming the argument; the portrait as RGB uint8."""
        pixels = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(
                f"image must be a PIL image or an RGB uint8 array (H, W, 3), got {pixels.dtype} {pixels.shape}"
            )
        samples = np.asarray(audio)
        if samples.ndim != 1 or samples.size == 0 or not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(
                f"audio must be mono float samples at {SPEECH_SAMPLE_RATE} Hz (a non-empty 1-D array), "
                f"got {samples.dtype} {samples.shape}"
            )
        if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
            raise ValueError("prompt and negative_prompt must be strings")
        if (height is None) != (width is None):
            raise ValueError("give both height and width, or neither")
        for name, side in (("height", height), ("width", width)):
            if side is not None and (side <= 0 or side % SIZE_DIVISOR):
                raise ValueError(f"{name} must be a positive multiple of {SIZE_DIVISOR}, got {side}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        return pixels

    @property
    def solver(self) -> str:
        """The sampler's solver, picked by the scheduler component's class."""
        for scheduler_class, solver in SOLVER_OF_SCHEDULER.items():
            if isinstance(self.scheduler, scheduler_class):
                return solver
        names = ", ".join(cls.__name__ for cls in SOLVER_OF_SCHEDULER)
        raise ValueError(
            f"WanS2VPipeline samples with {names} (flow sigmas), not {type(self.scheduler).__name__}: "
            "set pipe.scheduler to one of them, e.g. DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)"
        )

    @staticmethod
    def _postprocess(video: torch.Tensor, output_type: str) -> Any:
        """[1, 3, n, H, W] in [-1, 1] -> a batch of one video in `output_type`."""
        if output_type == "pil":
            return [[Image.fromarray(frame) for frame in to_uint8_frames(video)]]
        unit = ((video.clamp(-1, 1) + 1) / 2).permute(0, 2, 1, 3, 4)  # [1, n, 3, H, W] in [0, 1]
        if output_type == "pt":
            return unit
        return unit.permute(0, 1, 3, 4, 2).float().cpu().numpy()

    # --- conditioning, each computed once -----------------------------------------------------

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """[1, text_len, 4096] on the execution device; the last PROMPT_CACHE_SIZE are kept."""
        cached = self._prompts.get(prompt, lambda text: self._encode_text(text).to(self.device, self.dtype))
        return cached.to(self.device, self.dtype)

    def _encode_text(self, prompt: str) -> torch.Tensor:
        model = self.text_encoder.model
        home = model.device
        if self.text_device is None or self.text_device == home:
            return self.text_encoder.encode([prompt])
        model.to(self.text_device)
        try:
            return self.text_encoder.encode([prompt])
        finally:
            model.to(home)

    def text_encoder_bytes_on(self, device: torch.device) -> int:
        """The bytes the text encoder holds on `device` (0 when it is kept elsewhere)."""
        model = self.text_encoder.model
        if model.device != device:
            return 0
        return sum(tensor.nbytes for tensor in (*model.parameters(), *model.buffers()))

    def keep_text_encoder_in_host_memory(self) -> None:
        """From now on keep the text encoder in host memory; a new prompt brings it to where prompts
        are encoded (`text_device`, by default the execution device) for that encode alone."""
        model = self.text_encoder.model
        if self.text_device is None:
            self.text_device = model.device
        model.to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # its memory back to the device for what comes next

    def encode_portrait(self, image: np.ndarray, height: int, width: int) -> PortraitLatent:
        """The reference latent of an RGB uint8 portrait, fitted to `height` x `width`."""
        pixels = to_pixels(fit_portrait(image, height, width))
        latent = self.vae.encode(pixels[None, :, None].to(self.vae.device))
        return PortraitLatent(latent=latent.to(self.device), height=height, width=width)

    def _empty_motion_latents(self, height: int, width: int) -> torch.Tensor:
        """The first clip's motion context: black frames, encoded once per video size."""
        key = (height, width)
        if key not in self._empty_motion:
            black = torch.zeros(1, 3, MOTION_FRAMES, height, width, device=self.vae.device)
            self._empty_motion[key] = self.vae.encode(black)
        return self._empty_motion[key]

    # --- generation ---------------------------------------------------------------------------

    def generate(
        self,
        portrait: PortraitLatent,
        speech_16k: np.ndarray,
        seed: int,
        prompt: str,
        settings: SamplingSettings,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        """Yield RGB uint8 frames (n, height, width, 3), clip by clip, exactly as long as the speech."""
        for pixels in self.generate_pixels(portrait, speech_16k, seed, prompt, settings, on_progress):
            yield to_uint8_frames(pixels)

    @torch.no_grad()
    def generate_pixels(
        self,
        portrait: PortraitLatent,
        speech_16k: np.ndarray,
        seed: int,
        prompt: str,
        settings: SamplingSettings,
        on_progress: ProgressCallback,
    ) -> Iterator[torch.Tensor]:
        """Yield float pixels [1, 3, n, height, width] in [-1, 1], clip by clip, exactly as long as
        the speech."""
        num_frames = num_frames_for(len(speech_16k) / SPEECH_SAMPLE_RATE, FPS)
        speech = self.speech_encoder.encode(speech_16k, fps=FPS)
        num_clips = clips_for(num_frames, self.speech_encoder.num_clips(len(speech_16k)))
        use_guidance = settings.guidance_scale > 1
        context = self.encode_prompt(prompt)
        if use_guidance:
            context = torch.cat([context, self.encode_prompt(settings.negative_prompt)])
        clock = ProgressClock(num_clips * (settings.num_steps + 1), on_progress)

        motion_pixels = torch.zeros(1, 3, MOTION_FRAMES, portrait.height, portrait.width, device=self.vae.device)
        motion_latents = self._empty_motion_latents(portrait.height, portrait.width)
        remaining = num_frames
        for clip in range(num_clips):
            first = clip == 0
            audio = bucket_clip_features(speech, clip, FRAMES_PER_CLIP).to(self.device, self.dtype)

            def on_step(step: int, clip: int = clip) -> None:
                clock.tick(f"clip {clip + 1}/{num_clips}, step {step}/{settings.num_steps}")

            latents = self._denoise_clip(
                portrait, motion_latents, audio, context, seed + clip, first, settings, on_step
            )
            pixels = self._decode_clip(latents, portrait.latent if first and DROP_FIRST_MOTION else motion_latents)
            if first and DROP_FIRST_MOTION:
                pixels = pixels[:, :, FIRST_CLIP_DROPPED_FRAMES:]
            clock.tick(f"clip {clip + 1}/{num_clips} decoded")

            kept = min(MOTION_FRAMES, pixels.shape[2])
            motion_pixels = torch.cat([motion_pixels[:, :, kept:], pixels[:, :, -kept:]], dim=2)
            if clip + 1 < num_clips:
                motion_latents = self.vae.encode(motion_pixels)

            pixels = pixels[:, :, :remaining]
            remaining -= pixels.shape[2]
            if clip + 1 == num_clips and remaining > 0:  # the few frames clips_for leaves to a hold
                pixels = torch.cat([pixels, pixels[:, :, -1:].expand(-1, -1, remaining, -1, -1)], dim=2)
                remaining = 0
            yield pixels
            if remaining <= 0:
                return

    def _denoise_clip(
        self,
        portrait: PortraitLatent,
        motion_latents: torch.Tensor,
        audio: torch.Tensor,
        context: torch.Tensor,
        seed: int,
        first: bool,
        settings: SamplingSettings,
        on_step: Callable[[int], None],
    ) -> torch.Tensor:
        """The denoised latents of one clip, from the noise of its own `seed`."""
        generator = torch.Generator(self.device).manual_seed(seed)
        latent_h, latent_w = portrait.height // VAE_STRIDE[1], portrait.width // VAE_STRIDE[2]
        # Drawn in the compute dtype, like the reference, so that a seed gives its noise.
        noise = torch.randn(
            1, self.transformer.config.in_channels, LATENT_CLIP_FRAMES, latent_h, latent_w,
            dtype=self.dtype, device=self.device, generator=generator,
        )
        latents = noise.float()
        scheduler, timesteps = make_scheduler(settings.solver, settings.num_steps, settings.shift, self.device)

        batch = context.shape[0]
        audio_batch = torch.cat([audio, torch.zeros_like(audio)]) if batch == 2 else audio
        conditions = dict(
            encoder_hidden_states=context,
            ref_latents=portrait.latent.to(self.dtype).expand(batch, -1, -1, -1, -1),
            motion_latents=motion_latents.to(self.device, self.dtype).expand(batch, -1, -1, -1, -1),
            audio_features=audio_batch,
            pose_latents=None,
            motion_frames=(MOTION_FRAMES, LATENT_MOTION_FRAMES),
            drop_motion_frames=first and DROP_FIRST_MOTION,
        )
        for step, t in enumerate(timesteps):
            model_input = latents.to(self.dtype).expand(batch, -1, -1, -1, -1)
            prediction = self.transformer(model_input, timestep=t.expand(batch), **conditions).float()
            if batch == 2:
                conditional, unconditional = prediction.chunk(2)
                prediction = unconditional + settings.guidance_scale * (conditional - unconditional)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
            on_step(step + 1)
        return latents

    def _decode_clip(self, latents: torch.Tensor, context_latents: torch.Tensor) -> torch.Tensor:
        """Float pixels [1, 3, 80, H, W] of a clip, decoded behind its context like the reference."""
        decoded = self.vae.decode(torch.cat([context_latents.to(latents.device), latents], dim=2))
        return decoded[:, :, -FRAMES_PER_CLIP:]


def _ignore_progress(fraction: float, detail: str) -> None:
    pass
