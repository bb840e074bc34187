"""InfiniteTalk's sampler arithmetic: the shifted schedule, the guidance passes and their mix, the
Euler update and the noised motion frames (`generate_infinitetalk` in `wan/multitalk.py`).

Quality mode runs three passes per step: with text and audio, without text (audio kept), and
without either; the prediction is uncond + text_scale (cond - no_text) + audio_scale (no_text -
uncond). With text guidance 1 (the step-distilled fast setting) the text terms vanish and two
passes remain: with everything, and without audio; prediction = no_audio + audio_scale (cond -
no_audio). "Without audio" is a single speaker of zeros, whatever the number of speakers.
"""

from __future__ import annotations

import math
from enum import Enum

import torch

from .config import NUM_TRAIN_TIMESTEPS


class GuidancePass(Enum):
    """One transformer call of a sampling step: which conditions it keeps."""

    FULL = "full"  # text and audio
    NO_TEXT = "no_text"  # the negative prompt, audio kept
    NO_AUDIO = "no_audio"  # text kept, silent audio
    NEITHER = "neither"  # the negative prompt and silent audio


def guidance_passes(text_scale: float) -> tuple[GuidancePass, ...]:
    """The passes each step runs for this text guidance scale."""
    if math.isclose(text_scale, 1.0):
        return (GuidancePass.FULL, GuidancePass.NO_AUDIO)
    return (GuidancePass.FULL, GuidancePass.NO_TEXT, GuidancePass.NEITHER)


def guided_prediction(
    predictions: dict[GuidancePass, torch.Tensor], text_scale: float, audio_scale: float
) -> torch.Tensor:
    """The step's prediction from the passes `guidance_passes(text_scale)` ran."""
    full = predictions[GuidancePass.FULL]
    if math.isclose(text_scale, 1.0):
        no_audio = predictions[GuidancePass.NO_AUDIO]
        return no_audio + audio_scale * (full - no_audio)
    no_text, neither = predictions[GuidancePass.NO_TEXT], predictions[GuidancePass.NEITHER]
    return neither + text_scale * (full - no_text) + audio_scale * (no_text - neither)


def sampling_timesteps(steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """`steps` + 1 timesteps from num_train_timesteps down to 0, float32: evenly spaced to 1, then 0,
    each moved by the flow-matching shift t' = shift t / (1 + (shift - 1) t) (t as a fraction)."""
    if steps < 1 or not shift > 0:
        raise ValueError(f"need at least one step and a positive shift, got steps={steps}, shift={shift}")
    spaced = torch.cat([torch.linspace(num_train_timesteps, 1, steps, dtype=torch.float64).float(), torch.zeros(1)])
    fraction = spaced / num_train_timesteps
    return shift * fraction / (1 + (shift - 1) * fraction) * num_train_timesteps


def euler_step(
    latent: torch.Tensor, prediction: torch.Tensor, timestep: torch.Tensor, next_timestep: torch.Tensor,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """The latent at `next_timestep`: the prediction is the flow's velocity towards the noise."""
    return latent - prediction * ((timestep - next_timestep) / num_train_timesteps)


def noised_motion(
    motion_latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> torch.Tensor:
    """The clean motion-frame latents mixed with noise to the level of `timestep`."""
    level = timestep.float() / num_train_timesteps
    return (1 - level) * motion_latents + level * noise
