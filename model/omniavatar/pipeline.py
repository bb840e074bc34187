"""OmniAvatar's long-speech generation: overlapping chunks, each sampled, decoded and handed on.

As `WanInferencePipeline.forward` in the reference's `scripts/inference.py` does:

- the speech gets LEADING_SILENCE_SECONDS of silence in front, its wav2vec2 rows are padded to
  whole chunks (layout.padded_speech_frames), and each chunk takes its rows (chunk_speech_rows);
- the portrait's latent is every chunk's condition: beside the noisy latents the transformer sees
  it repeated over the chunk's latent frames, and a mask that is 0 on the given frames;
- the first chunk is given the portrait (one latent frame); each later one the VAE encoding of
  the previous chunk's last `overlap` decoded frames (1 + (overlap - 1) / 4 latent frames);
- every chunk is decoded on its own; the first is kept whole, a later one without its overlap.

The reference's video starts with the portrait's frame and runs over the silence; the worker's
must last exactly as long as the speech, at 25 fps, so the first LEADING_FRAMES are dropped and
the video is cut at the speech's end. Only one chunk's frames are in memory at a time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import numpy as np
import torch

from model.base import ProgressCallback, num_frames_for
from model.wan_common.frames import to_pixels, to_uint8_frames
from model.wan_common.progress import ProgressClock
from model.wan_common.text import PromptCache, TextEncoder
from model.wan_common.vae import StreamingDecoder, WanVideoVAE

from .config import (
    FPS,
    GUIDANCE_SCALE,
    LEADING_SILENCE_SECONDS,
    MAX_TOKENS,
    NEGATIVE_PROMPT,
    OVERLAP_FRAMES,
    SAMPLE_RATE,
    SAMPLE_STEPS,
    VAE_STRIDE,
)
from .layout import FIRST_CHUNK_GIVEN_FRAMES, chunk_count, chunk_frames, chunk_speech_rows, padded_speech_frames
from .sampling import denoise_chunk
from .speech import SpeechEncoder, speech_frames, with_leading_silence
from .transformer import OmniAvatarTransformer3DModel

# The reference's frames before the speech: the portrait's, then the silence's 7.5 frames. Its
# video, muxed 1/25 s + 0.3 s late, shows speech time s at frame 8.5 + 25 s; dropping 8 puts each
# frame 20 ms behind its sound, within what lip-sync perception tolerates, and never needs a
# frame the reference would not make.
LEADING_FRAMES = FIRST_CHUNK_GIVEN_FRAMES + int(LEADING_SILENCE_SECONDS * FPS)
PROMPT_CACHE_SIZE = 8


@dataclasses.dataclass(frozen=True)
class ChunkSettings:
    """A job's sampling settings; the defaults are the reference's config."""

    steps: int = SAMPLE_STEPS
    guidance_scale: float = GUIDANCE_SCALE
    audio_scale: float | None = None
    overlap: int = OVERLAP_FRAMES
    max_tokens: int = MAX_TOKENS
    negative_prompt: str = NEGATIVE_PROMPT

    @property
    def passes_per_step(self) -> int:
        """Transformer runs a step takes (sampling.guided_prediction)."""
        if self.guidance_scale == 1.0:
            return 1
        audio = self.guidance_scale if self.audio_scale is None else self.audio_scale
        return 2 if audio == self.guidance_scale else 3


@dataclasses.dataclass(frozen=True)
class PortraitLatent:
    """A portrait fitted to the video size, and its VAE latent [1, 16, 1, h, w] (float32)."""

    latent: torch.Tensor
    height: int
    width: int


@dataclasses.dataclass
class OmniAvatarComponents:
    """The loaded models (eval mode, gradients off)."""

    transformer: OmniAvatarTransformer3DModel
    vae: WanVideoVAE
    text_encoder: TextEncoder
    speech_encoder: SpeechEncoder


@dataclasses.dataclass(frozen=True)
class VideoPlan:
    """How one job's video is cut into chunks."""

    chunk: int  # video frames per chunk (4n + 1)
    overlap: int
    padded_frames: int  # speech rows after the portrait's frame
    chunks: int
    output_frames: int  # what the worker's video keeps: exactly the speech's length at FPS


def plan_video(height: int, width: int, num_samples: int, settings: ChunkSettings) -> VideoPlan:
    """The chunks of a video of speech with `num_samples` samples at 16 kHz (before the silence).

    Raises ValueError when the token budget leaves no new frame after the overlap.
    """
    chunk = chunk_frames(height, width, settings.max_tokens)
    if settings.overlap >= chunk:
        raise ValueError(
            f"overlap_frames={settings.overlap} leaves no new frame in chunks of {chunk} frames at {width}x{height}: "
            "lower overlap_frames or raise max_tokens"
        )
    output = num_frames_for(num_samples / SAMPLE_RATE, FPS)
    covered = speech_frames(num_samples + int(round(LEADING_SILENCE_SECONDS * SAMPLE_RATE)))
    padded = padded_speech_frames(max(covered, LEADING_FRAMES - 1 + output), chunk, settings.overlap)
    return VideoPlan(chunk, settings.overlap, padded, chunk_count(padded, chunk, settings.overlap), output)


class OmniAvatarPipeline:
    """The models placed for a memory mode, and the chunk loop."""

    def __init__(
        self, components: OmniAvatarComponents, device: torch.device, dtype: torch.dtype,
        text_device: torch.device | None = None,
    ) -> None:
        """`dtype` is the transformer's compute type; `text_device`, where a prompt is encoded when
        the text encoder lives elsewhere (None: where it is)."""
        self.components = components
        self.transformer = components.transformer
        self.vae = components.vae
        self.device = device
        self.dtype = dtype
        self.text_device = text_device
        self._prompts = PromptCache(PROMPT_CACHE_SIZE)

    # --- conditions --------------------------------------------------------------------------

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """[1, text_len, 4096] umT5 states (zero after the prompt's tokens); the last few are kept."""
        return self._prompts.get(prompt, lambda text: self._encode_text(text).to(self.device, self.dtype))

    def _encode_text(self, prompt: str) -> torch.Tensor:
        encoder = self.components.text_encoder
        home = encoder.model.device
        if self.text_device is None or self.text_device == home:
            return encoder.encode([prompt])
        encoder.model.to(self.text_device)
        try:
            return encoder.encode([prompt])
        finally:
            encoder.model.to(home)

    def encode_portrait(self, fitted: np.ndarray) -> PortraitLatent:
        """The latent of an RGB uint8 portrait already fitted to the video size (portrait.fit_portrait)."""
        pixels = to_pixels(fitted)[None, :, None]
        return PortraitLatent(self.vae.encode(pixels), int(fitted.shape[0]), int(fitted.shape[1]))

    # --- generation --------------------------------------------------------------------------

    def generate(
        self, portrait: PortraitLatent, samples_16k: np.ndarray, seed: int, prompt: str, settings: ChunkSettings,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        """RGB uint8 frames (n, height, width, 3), chunk by chunk, exactly as long as the speech."""
        plan = plan_video(portrait.height, portrait.width, len(samples_16k), settings)
        skip, left = LEADING_FRAMES, plan.output_frames
        for pixels in self.generate_pixels(portrait, samples_16k, seed, prompt, settings, on_progress, plan):
            dropped = min(skip, pixels.shape[2])
            kept = pixels[:, :, dropped : dropped + left]
            skip -= dropped
            left -= kept.shape[2]
            if kept.shape[2]:
                yield to_uint8_frames(kept)
            if not left:
                return

    @torch.no_grad()
    def generate_pixels(
        self, portrait: PortraitLatent, samples_16k: np.ndarray, seed: int, prompt: str, settings: ChunkSettings,
        on_progress: ProgressCallback, plan: VideoPlan | None = None,
    ) -> Iterator[torch.Tensor]:
        """The reference's video, chunk by chunk, as pixels in [-1, 1] [1, 3, n, H, W] (float32):
        the first chunk whole (the portrait's frame first), each later one without its overlap."""
        plan = plan or plan_video(portrait.height, portrait.width, len(samples_16k), settings)
        text = self.encode_prompt(prompt)
        negative = self.encode_prompt(settings.negative_prompt) if settings.guidance_scale != 1.0 else text
        speech = self.components.speech_encoder.encode(with_leading_silence(samples_16k), plan.padded_frames)
        clock = ProgressClock(plan.chunks * (settings.steps * settings.passes_per_step + 1), on_progress)
        generator = torch.Generator().manual_seed(seed)
        latent_frames = (plan.chunk - 1) // VAE_STRIDE[0] + 1
        reference = portrait.latent.to(self.device, torch.float32)
        mask = torch.ones_like(reference[:, :1]).repeat(1, 1, latent_frames, 1, 1)
        previous: torch.Tensor | None = None
        for index in range(plan.chunks):
            if previous is None:
                given = reference
            else:
                given = self.vae.encode(previous).to(self.device, torch.float32)
            given_frames = given.shape[2]
            mask[:, :, :given_frames] = 0
            condition = torch.cat([reference.repeat(1, 1, latent_frames, 1, 1), mask], dim=1)
            padded_given = torch.cat(
                [given, torch.zeros_like(reference).repeat(1, 1, latent_frames - given_frames, 1, 1)], dim=2
            )
            noise = torch.randn(padded_given.shape, generator=generator).to(self.device)
            rows = chunk_speech_rows(speech, plan.chunk, index, plan.overlap)[None].to(self.device)
            latents = denoise_chunk(
                functools.partial(self._predict, condition, clock, f"chunk {index + 1}/{plan.chunks}"),
                padded_given, given_frames, noise, text, negative, rows, settings.steps,
                settings.guidance_scale, settings.audio_scale,
            )
            pixels = StreamingDecoder(self.vae).decode(latents)
            clock.tick(f"chunk {index + 1}/{plan.chunks} decoded")
            previous = pixels[:, :, -plan.overlap :]
            yield pixels if index == 0 else pixels[:, :, plan.overlap :]

    def _predict(
        self, condition: torch.Tensor, clock: ProgressClock, stage: str, latents: torch.Tensor,
        timestep: torch.Tensor, text: torch.Tensor, speech: torch.Tensor,
    ) -> torch.Tensor:
        inputs = torch.cat([latents, condition], dim=1).to(self.dtype)
        output = self.transformer(
            inputs, timestep.to(self.dtype), text.to(self.dtype), speech.to(self.dtype), return_dict=False
        )[0]
        clock.tick(f"{stage}, sampling")
        return output.float()
