"""InfiniteTalk's generation: one clip's denoising, and clips chained over any length of speech.

The steps follow the reference's `generate_infinitetalk` (`wan/multitalk.py`):

- every clip is conditioned on one frame (the portrait, or in video mode the source video's frame
  where the clip starts): its CLIP features, and its VAE latents with the frame's zero-padded
  clip behind it, under a 4-channel mask marking the first latent frame as given;
- the clip's first latent frames are held to the "motion" latents at every step: the frame's own
  latent for the first clip, the VAE encoding of the previous clip's last MOTION_FRAMES decoded
  frames after it;
- each step runs the guidance passes of `sampling.guidance_passes` and an Euler update on the
  shifted schedule;
- each clip after the first starts CLIP_FRAMES - MOTION_FRAMES frames after the one before and
  keeps only its new frames; the clip whose audio windows reach the end of the speech is the
  last, its speech padded with the speech's own end played backwards; the video is cut to the
  speech's length.

Clips are yielded one by one: only the last clip's motion frames are kept between clips, so the
memory the video takes does not grow with the speech (the speech features, a few kB per frame,
are held whole, as wav2vec2 encodes the speech at once).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch

from .colour import match_colours
from .config import (
    AUDIO_GUIDE_SCALE,
    AUDIO_WINDOW,
    CLIP_FRAMES,
    COLOUR_CORRECTION_STRENGTH,
    DEFAULT_SIZE_BUCKET,
    FAST_AUDIO_GUIDE_SCALE,
    FAST_SAMPLE_SHIFT,
    FAST_SAMPLE_STEPS,
    FAST_TEXT_GUIDE_SCALE,
    MOTION_FRAMES,
    SAMPLE_SHIFT,
    SAMPLE_STEPS,
    TEXT_GUIDE_SCALE,
    VAE_STRIDE,
)
from .sampling import GuidancePass, euler_step, guidance_passes, guided_prediction, sampling_timesteps
from .speech import frame_windows
from .transformer import InfiniteTalkTransformer3DModel

# the speech's end is mirrored this many frames past the last clip's end, as the reference pads it
END_PADDING_MARGIN = 3


@dataclasses.dataclass(frozen=True)
class Sampling:
    """A sampling schedule: its steps and shift, and the text and audio guidance scales."""

    steps: int
    shift: float
    text_scale: float
    audio_scale: float


QUALITY = Sampling(SAMPLE_STEPS, SAMPLE_SHIFT[DEFAULT_SIZE_BUCKET], TEXT_GUIDE_SCALE, AUDIO_GUIDE_SCALE)
# with the step-distillation LoRA merged into the transformer
FAST = Sampling(FAST_SAMPLE_STEPS, FAST_SAMPLE_SHIFT, FAST_TEXT_GUIDE_SCALE, FAST_AUDIO_GUIDE_SCALE)


class VideoAutoencoder(Protocol):
    """What the pipeline needs of the VAE (`wan_common.vae.WanVideoVAE` is one): pixels in [-1, 1]
    [B, 3, T, H, W] <-> normalised latents [B, channels, 1 + (T - 1) / 4, H / 8, W / 8]."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


ImageFeatures = Callable[[torch.Tensor], torch.Tensor]
"""Frames [B, 3, H, W] in [-1, 1] -> CLIP token states [B, tokens, dim] (`ImageEncoder.encode`)."""


@dataclasses.dataclass(frozen=True)
class FrameCondition:
    """What one conditioning frame gives a clip: its CLIP features [1, tokens, dim] and the I2V
    condition [1, 4 + channels, latent frames, h, w] (mask, then the padded clip's latents)."""

    image_features: torch.Tensor
    condition: torch.Tensor
    frame_latent: torch.Tensor  # [channels, 1, h, w]: the first clip's motion latent


def latent_frames(video_frames: int) -> int:
    if video_frames < 1 or (video_frames - 1) % VAE_STRIDE[0]:
        raise ValueError(f"a clip needs 1 + {VAE_STRIDE[0]}k frames, got {video_frames}")
    return 1 + (video_frames - 1) // VAE_STRIDE[0]


def first_frame_mask(clip_frames: int, height: int, width: int) -> torch.Tensor:
    """[1, 4, latent frames, h, w]: ones for the first latent frame (the given frame), zeros after.

    The VAE packs 4 video frames per latent frame; the given frame is repeated 4 times to fill the
    first latent frame's 4 mask channels."""
    stride = VAE_STRIDE[0]
    mask = torch.zeros(1, stride, latent_frames(clip_frames), height, width)
    mask[:, :, 0] = 1
    return mask


def frame_condition(
    frame: torch.Tensor, vae: VideoAutoencoder, image_features: ImageFeatures, clip_frames: int
) -> FrameCondition:
    """The condition of a clip on `frame` [3, H, W] in [-1, 1] at the video's size."""
    channels, height, width = frame.shape
    if channels != 3 or height % VAE_STRIDE[1] or width % VAE_STRIDE[2]:
        raise ValueError(f"the frame must be [3, H, W] with H and W multiples of 8, got {list(frame.shape)}")
    pixels = frame.float()[None, :, None]
    padded = torch.cat([pixels, pixels.new_zeros(1, 3, clip_frames - 1, height, width)], dim=2)
    latents = vae.encode(padded)
    mask = first_frame_mask(clip_frames, *latents.shape[-2:]).to(latents)
    return FrameCondition(
        image_features=image_features(pixels[:, :, 0]),
        condition=torch.cat([mask, latents], dim=1),
        frame_latent=vae.encode(pixels)[0],
    )


@dataclasses.dataclass(frozen=True)
class Prompts:
    """umT5 states [1, tokens, dim] of the prompt and of the negative prompt."""

    text: torch.Tensor
    negative: torch.Tensor


@torch.no_grad()
def denoise_clip(
    transformer: InfiniteTalkTransformer3DModel,
    noise: torch.Tensor,
    condition: FrameCondition,
    prompts: Prompts,
    audio: torch.Tensor,
    motion_latents: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator,
    speaker_regions: torch.Tensor | None = None,
    carried_motion: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """One clip's latents [channels, latent frames, h, w] from `noise` of that shape.

    `audio` is the clip's windows [speakers, clip frames, window, layers, hidden]; its first
    latent frames are held to `motion_latents` [channels, m, h, w]. `carried_motion` (every clip
    but the first) makes the loop draw, from `generator`, the noise the reference draws for the
    motion latents each step: that noise is overwritten by the motion latents themselves before
    any use, but drawing it keeps a seed's noise for later clips the reference's.
    """
    passes = guidance_passes(sampling.text_scale)
    silent = torch.zeros_like(audio[-1:])
    inputs = {
        GuidancePass.FULL: (prompts.text, audio),
        GuidancePass.NO_TEXT: (prompts.negative, audio),
        GuidancePass.NO_AUDIO: (prompts.text, silent),
        GuidancePass.NEITHER: (prompts.negative, silent),
    }
    timesteps = sampling_timesteps(sampling.steps, sampling.shift).to(noise.device)
    held = motion_latents.shape[1]
    latent = noise.clone()
    # the sampler stays in float32; the transformer computes in its own dtype (bfloat16 on a GPU,
    # some of its norms kept in float32): its inputs are cast to its patch embedding's
    dtype = transformer.patch_embedding.weight.dtype
    image = condition.image_features.to(dtype)
    inputs = {key: (text.to(dtype), speech.to(dtype)) for key, (text, speech) in inputs.items()}
    regions = None if speaker_regions is None else speaker_regions.to(noise.device)

    def draw_motion_noise() -> None:
        if carried_motion:
            torch.randn(
                motion_latents.shape, generator=generator, dtype=motion_latents.dtype, device=generator.device
            )

    draw_motion_noise()
    for step in range(sampling.steps):
        latent[:, :held] = motion_latents
        hidden = torch.cat([latent[None], condition.condition.to(latent)], dim=1).to(dtype)
        timestep = timesteps[step : step + 1]
        predictions = {}
        for guidance in passes:
            text, speech = inputs[guidance]
            predictions[guidance] = transformer(
                hidden, timestep, text, image, speech, regions if speech.shape[0] > 1 else None
            ).sample[0].float()
        prediction = guided_prediction(predictions, sampling.text_scale, sampling.audio_scale)
        latent = euler_step(latent, prediction, timesteps[step], timesteps[step + 1])
        draw_motion_noise()
        if on_step is not None:
            on_step(step)
    latent[:, :held] = motion_latents
    return latent


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """Where the clips of a video lie in its speech.

    `starts`: each clip's first frame (clip i covers starts[i] .. starts[i] + clip_frames - 1);
    `frames`: the video's length; `padded_to`: the frames the speech is padded to (mirroring its
    end) for the last clip's windows, or None when the last clip ends inside the speech."""

    starts: tuple[int, ...]
    frames: int
    padded_to: int | None
    clip_frames: int
    motion_frames: int


def plan_clips(
    speech_frames: int, clip_frames: int = CLIP_FRAMES, motion_frames: int = MOTION_FRAMES,
    max_frames: int | None = None,
) -> ClipPlan:
    """The clips covering `speech_frames` frames of speech (at most `max_frames` of video).

    As the reference: clips advance by clip_frames - motion_frames, and the first clip whose end
    reaches the limit (the speech's end or max_frames) is the last. Speech of one clip or less
    (which the reference refuses) makes one clip, padded like a last clip."""
    latent_frames(clip_frames)
    if not 1 <= motion_frames < clip_frames or (motion_frames - 1) % VAE_STRIDE[0]:
        raise ValueError(f"motion frames must be 1 + {VAE_STRIDE[0]}k and fewer than the clip's, got {motion_frames}")
    if speech_frames < 1:
        raise ValueError("the speech is shorter than one video frame")
    limit = speech_frames if max_frames is None else min(max_frames, speech_frames)
    step = clip_frames - motion_frames
    starts = [0]
    while starts[-1] + clip_frames < limit:
        starts.append(starts[-1] + step)
    end = starts[-1] + clip_frames
    padded_to = end + END_PADDING_MARGIN if end >= speech_frames else None
    return ClipPlan(tuple(starts), limit, padded_to, clip_frames, motion_frames)


def pad_speech_end(features: torch.Tensor, padded_to: int | None) -> torch.Tensor:
    """Speech features [frames, ...] extended to `padded_to` frames by their own end, reversed."""
    if padded_to is None or padded_to <= features.shape[0]:
        return features
    missing = padded_to - features.shape[0]
    return torch.cat([features, torch.flip(features[-missing:], dims=[0])], dim=0)


def clip_audio(speakers: Sequence[torch.Tensor], start: int, clip_frames: int, window: int = AUDIO_WINDOW):
    """The clip's windows [speakers, clip frames, window, layers, hidden]."""
    return torch.stack([frame_windows(features, start, start + clip_frames, window) for features in speakers])


@torch.no_grad()
def generate_clips(
    transformer: InfiniteTalkTransformer3DModel,
    vae: VideoAutoencoder,
    image_features: ImageFeatures,
    conditioning_frame: Callable[[int], torch.Tensor],
    prompts: Prompts,
    speech_features: Sequence[torch.Tensor],
    sampling: Sampling,
    seed: int,
    speaker_regions: torch.Tensor | None = None,
    clip_frames: int = CLIP_FRAMES,
    motion_frames: int = MOTION_FRAMES,
    max_frames: int | None = None,
    colour_strength: float = COLOUR_CORRECTION_STRENGTH,
    on_step: Callable[[int, int], None] | None = None,
    device: torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Video frames [3, n, H, W] in [-1, 1], clip by clip, their n adding up to the speech's frames.

    `conditioning_frame(start)` is the frame [3, H, W] in [-1, 1] conditioning the clip starting at
    video frame `start` (the portrait every time; in video mode the source's frame there).
    `speech_features` holds each speaker's features [frames, layers, hidden], all as long. The
    noise comes from a generator seeded with `seed` on the transformer's device, drawn in the
    reference's order. Each decoded clip's colours are matched to the first clip's conditioning
    frame by `colour_strength` (colour.py) before it is kept or carried. `on_step(clip, step)`
    follows the denoising. `device` is where the transformer computes (default: where its first
    parameter is, which a memory mode that streams blocks from host memory leaves on the CPU).
    """
    lengths = {features.shape[0] for features in speech_features}
    if len(lengths) != 1:
        raise ValueError(f"the speakers' speech must be equally long, got {sorted(lengths)} frames")
    plan = plan_clips(lengths.pop(), clip_frames, motion_frames, max_frames)
    speakers = [pad_speech_end(features, plan.padded_to) for features in speech_features]
    device = device or next(transformer.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    motion_pixels: torch.Tensor | None = None
    cached: tuple[torch.Tensor, FrameCondition] | None = None
    left = plan.frames
    colour_reference: torch.Tensor | None = None
    for index, start in enumerate(plan.starts):
        frame = conditioning_frame(start)
        if cached is None or cached[0] is not frame:
            cached = (frame, frame_condition(frame.to(device), vae, image_features, clip_frames))
        if colour_reference is None:
            colour_reference = frame.to(device)
        condition = cached[1]
        channels, _, height, width = condition.frame_latent.shape
        noise = torch.randn(
            channels, latent_frames(clip_frames), height, width, generator=generator, dtype=torch.float32,
            device=device,
        )
        if motion_pixels is None:
            motion = condition.frame_latent
        else:
            motion = vae.encode(motion_pixels)[0]
        latents = denoise_clip(
            transformer, noise, condition, prompts, clip_audio(speakers, start, clip_frames).to(device), motion,
            sampling, generator, speaker_regions, carried_motion=motion_pixels is not None,
            on_step=None if on_step is None else functools.partial(on_step, index),
        )
        video = match_colours(vae.decode(latents[None])[0], colour_reference, colour_strength)[None]
        new = video[0, :, (0 if motion_pixels is None else motion_frames) :]
        motion_pixels = video[:, :, -motion_frames:]
        del video, latents
        yield new[:, :left]
        left -= min(left, new.shape[1])
        if left == 0:
            return
