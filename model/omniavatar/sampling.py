"""OmniAvatar's sampler for one chunk: Euler steps of flow matching with text and audio guidance.

As `WanVideoPipeline.log_video` (OmniAvatar/wan_video.py) with its `FlowMatchScheduler`
(`shift=5, sigma_min=0, extra_one_step=True`) samples: sigmas evenly from 1 towards 0 (0
excluded), shifted; each step overwrites the given latent frames (the portrait, later the
previous chunk's overlap) with theirs, predicts, mixes the guidance and moves by
(next sigma - sigma) * prediction, the last step to sigma 0; the given frames are written once
more at the end.

Guidance (`cfg_scale` on text, `audio_cfg_scale` on audio; silence is the speech rows zeroed):
with equal scales, one negative pass (negative prompt, silence); otherwise two (prompt with
silence, negative prompt with silence); with a text scale of 1 no guidance at all, whatever
the audio scale.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from model.wan_common.config import NUM_TRAIN_TIMESTEPS

from .config import SAMPLE_SHIFT

# (latents, timestep [batch], text states, speech rows) -> the prediction
Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def flow_sigmas(steps: int, shift: float = SAMPLE_SHIFT) -> torch.Tensor:
    """The `steps` sigmas (float32), from 1 down, 0 excluded, shifted."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sigmas = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def guided_prediction(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    text: torch.Tensor,
    negative_text: torch.Tensor,
    speech: torch.Tensor,
    scale: float,
    audio_scale: float,
) -> torch.Tensor:
    """The guided prediction; `predict(text states, speech rows)` runs the model at this step."""
    spoken = predict(text, speech)
    if scale == 1.0:
        return spoken
    silence = torch.zeros_like(speech)
    if audio_scale == scale:
        unconditional = predict(negative_text, silence)
        return unconditional + scale * (spoken - unconditional)
    unspoken = predict(text, silence)
    unconditional = predict(negative_text, silence)
    return unconditional + scale * (unspoken - unconditional) + audio_scale * (spoken - unspoken)


def denoise_chunk(
    predict: Predict,
    given: torch.Tensor,
    given_frames: int,
    noise: torch.Tensor,
    text: torch.Tensor,
    negative_text: torch.Tensor,
    speech: torch.Tensor,
    steps: int,
    scale: float,
    audio_scale: float | None = None,
    shift: float = SAMPLE_SHIFT,
) -> torch.Tensor:
    """One chunk's latents [batch, channels, frames, h, w] from `noise`; the first `given_frames`
    latent frames are `given`'s. `audio_scale` None: the text scale (the reference's default)."""
    if noise.shape != given.shape:
        raise ValueError(f"noise {tuple(noise.shape)} and given latents {tuple(given.shape)} differ in shape")
    if not 0 <= given_frames <= given.shape[2]:
        raise ValueError(f"given_frames must be 0 .. {given.shape[2]}, got {given_frames}")
    audio_scale = scale if audio_scale is None else audio_scale
    sigmas = flow_sigmas(steps, shift)
    timesteps = sigmas * NUM_TRAIN_TIMESTEPS
    latents = noise.clone()
    for index in range(steps):
        if given_frames:
            latents[:, :, :given_frames] = given[:, :, :given_frames]
        timestep = timesteps[index].reshape(1).to(latents.device, latents.dtype)
        prediction = guided_prediction(
            functools.partial(predict, latents, timestep), text, negative_text, speech, scale, audio_scale
        )
        following = sigmas[index + 1] if index + 1 < steps else torch.tensor(0.0)
        latents = latents + prediction * (following - sigmas[index]).to(latents.device)
    if given_frames:
        latents[:, :, :given_frames] = given[:, :, :given_frames]
    return latents
