"""InfiniteTalk's sampler arithmetic (model/infinitetalk/sampling.py): the schedules of both modes,
the guidance passes and their mix, the Euler update and the noised motion frames, against the
statements of the reference's `generate_infinitetalk` (INFINITETALK_REFERENCE_REPO) run as they are."""

from __future__ import annotations

import pytest
import torch

from model.infinitetalk import config
from model.infinitetalk.sampling import (
    GuidancePass,
    euler_step,
    guidance_passes,
    guided_prediction,
    noised_motion,
    sampling_timesteps,
)
from tests.infinitetalk_reference import (
    reference_add_noise,
    reference_euler_update,
    reference_guidance,
    reference_schedule,
    requires_infinitetalk,
)

# our passes under the names the reference gives their predictions
REFERENCE_NAMES = {
    GuidancePass.FULL: "noise_pred_cond",
    GuidancePass.NO_TEXT: "noise_pred_drop_text",
    GuidancePass.NO_AUDIO: "noise_pred_drop_audio",
    GuidancePass.NEITHER: "noise_pred_uncond",
}
MODES = {
    "quality": (config.SAMPLE_STEPS, config.SAMPLE_SHIFT[config.DEFAULT_SIZE_BUCKET], config.TEXT_GUIDE_SCALE,
                config.AUDIO_GUIDE_SCALE),
    "fast": (config.FAST_SAMPLE_STEPS, config.FAST_SAMPLE_SHIFT, config.FAST_TEXT_GUIDE_SCALE,
             config.FAST_AUDIO_GUIDE_SCALE),
}


def _predictions(passes, seed: int = 0) -> dict[GuidancePass, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {guidance: torch.randn(4, 3, 2, 2, generator=generator) for guidance in passes}


def test_the_schedule_runs_from_the_top_to_zero_and_the_shift_keeps_it_high_longer():
    plain, shifted = sampling_timesteps(4, 1.0), sampling_timesteps(4, 7.0)
    assert plain.dtype == torch.float32 and plain.shape == (5,)
    torch.testing.assert_close(plain, torch.tensor([1000.0, 667.0, 334.0, 1.0, 0.0]))
    assert shifted[0] == 1000 and shifted[-1] == 0
    assert torch.all(shifted[1:-1] > plain[1:-1]) and torch.all(shifted[1:] < shifted[:-1])
    with pytest.raises(ValueError, match="steps=0"):
        sampling_timesteps(0, 7.0)


def test_text_guidance_one_drops_the_text_passes():
    assert guidance_passes(1.0) == (GuidancePass.FULL, GuidancePass.NO_AUDIO)
    assert guidance_passes(5.0) == (GuidancePass.FULL, GuidancePass.NO_TEXT, GuidancePass.NEITHER)
    same = torch.ones(2)
    # with every pass agreeing, the mix is that prediction whatever the scales
    assert torch.equal(guided_prediction(dict.fromkeys(guidance_passes(5.0), same), 5.0, 4.0), same)
    assert torch.equal(guided_prediction(dict.fromkeys(guidance_passes(1.0), same), 1.0, 2.0), same)


def test_the_euler_step_lands_on_the_prediction_path_and_motion_noise_interpolates():
    latent, velocity = torch.zeros(3), torch.ones(3)
    # a velocity of one unit per schedule moves the latent by the fraction of the schedule stepped
    torch.testing.assert_close(euler_step(latent, velocity, torch.tensor([750.0]), torch.tensor([500.0])),
                               torch.full((3,), -0.25))
    clean, noise = torch.zeros(3), torch.ones(3)
    torch.testing.assert_close(noised_motion(clean, noise, torch.tensor([250.0])), torch.full((3,), 0.25))


@requires_infinitetalk
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_modes_schedule_guidance_and_update_match_the_reference(mode: str):
    steps, shift, text_scale, audio_scale = MODES[mode]
    expected_schedule = reference_schedule(steps, shift)
    ours = sampling_timesteps(steps, shift)
    assert ours.shape == (len(expected_schedule),)
    torch.testing.assert_close(ours, torch.cat(expected_schedule), rtol=0, atol=1e-4)

    predictions = _predictions(guidance_passes(text_scale), seed=steps)
    # only the passes we run are given to the reference: one it needs beyond them is a NameError
    named = {REFERENCE_NAMES[guidance]: tensor for guidance, tensor in predictions.items()}
    mixed = guided_prediction(predictions, text_scale, audio_scale)
    torch.testing.assert_close(mixed, reference_guidance(named, text_scale, audio_scale), rtol=0, atol=1e-6)

    latent = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    for step in (0, steps - 1):
        expected = reference_euler_update(latent.clone(), mixed, expected_schedule, step)
        torch.testing.assert_close(euler_step(latent, mixed, ours[step], ours[step + 1]), expected, rtol=0, atol=1e-6)
        noise = torch.randn_like(latent)
        torch.testing.assert_close(noised_motion(latent, noise, ours[step + 1]),
                                   reference_add_noise(latent, noise, expected_schedule[step + 1]), rtol=0, atol=1e-6)
