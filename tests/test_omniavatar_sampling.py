"""OmniAvatar's chunk sampler against the reference's `WanVideoPipeline.log_video`, both driving
the same tiny random transformer (the reference's `WanModel` there, ours converted from it)."""

from __future__ import annotations

import pytest
import torch

from model.omniavatar import config
from model.omniavatar.convert_transformer import convert_transformer_state_dict
from model.omniavatar.sampling import denoise_chunk, flow_sigmas, guided_prediction
from model.omniavatar.transformer import OmniAvatarTransformer3DModel
from tests.omniavatar_reference import (
    omniavatar_module,
    reference_chunk_latents,
    reference_log_video_default,
    reference_transformer,
    requires_omniavatar,
)
from tests.omniavatar_tiny_models import (
    SPEECH_FEATURE_DIM,
    TINY_TRANSFORMER,
    our_transformer_arguments,
    transformer_inputs,
)


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    reference = reference_transformer(TINY_TRANSFORMER)
    ours = OmniAvatarTransformer3DModel(
        **our_transformer_arguments(TINY_TRANSFORMER), audio_feature_dim=SPEECH_FEATURE_DIM
    )
    ours.load_state_dict(convert_transformer_state_dict(reference.state_dict()), strict=True)
    return reference, ours.float().eval()


@requires_omniavatar
def test_shift_is_log_videos_default() -> None:
    assert reference_log_video_default("sigma_shift") == config.SAMPLE_SHIFT


@requires_omniavatar
def test_sigmas_are_the_reference_schedulers() -> None:
    # as WanVideoPipeline.__init__ makes it
    flow_match = omniavatar_module("schedulers.flow_match")
    scheduler = flow_match.FlowMatchScheduler(shift=5, sigma_min=0.0, extra_one_step=True)
    for steps in (1, 4, 50):
        scheduler.set_timesteps(steps, denoising_strength=1.0, shift=config.SAMPLE_SHIFT)
        torch.testing.assert_close(flow_sigmas(steps), scheduler.sigmas, rtol=0, atol=0)


@requires_omniavatar
@pytest.mark.parametrize(("scale", "audio_scale"), [(4.5, 4.5), (4.5, 2.0), (1.0, 3.0)])
def test_chunk_latents_are_the_reference_ones(models, scale: float, audio_scale: float) -> None:
    reference, ours = models
    inputs = transformer_inputs(latent_frames=3, height=4, width=6, seed=2)
    negative = torch.randn(1, 5, TINY_TRANSFORMER["text_dim"], generator=torch.Generator().manual_seed(9))
    # the portrait's latent first, then zeros (`img_lat` as the script pads it)
    given = torch.zeros_like(inputs["latents"])
    given[:, :, :1] = inputs["latents"][:, :, :1]
    steps, seed = 3, 11
    expected = reference_chunk_latents(reference, given, 1, inputs, negative, steps, scale, audio_scale, seed)

    def predict(latents, timestep, text, speech):
        with torch.no_grad():
            return ours(torch.cat([latents, inputs["condition"]], 1), timestep, text, speech, return_dict=False)[0]

    torch.manual_seed(seed)
    noise = torch.randn_like(given)
    found = denoise_chunk(predict, given, 1, noise, inputs["text"], negative, inputs["speech"], steps, scale,
                          audio_scale)
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)


def test_guidance_runs_the_passes_each_setting_needs() -> None:
    calls = []

    def predict(text, speech):
        calls.append((float(text.sum()), bool(speech.any())))
        return text.sum() + 10 * speech.sum()

    text, negative, speech = torch.ones(1), torch.zeros(1), torch.ones(1)
    assert guided_prediction(predict, text, negative, speech, 1.0, 7.0) == 11 and calls == [(1.0, True)]
    calls.clear()
    assert guided_prediction(predict, text, negative, speech, 2.0, 2.0) == 22  # 0 + 2 * (11 - 0)
    assert calls == [(1.0, True), (0.0, False)]
    calls.clear()
    assert guided_prediction(predict, text, negative, speech, 2.0, 3.0) == 32  # 0 + 2 * (1 - 0) + 3 * (11 - 1)
    assert calls == [(1.0, True), (1.0, False), (0.0, False)]


def test_bad_chunk_arguments_are_refused() -> None:
    latents = torch.zeros(1, 2, 3, 2, 2)
    with pytest.raises(ValueError, match="differ in shape"):
        denoise_chunk(lambda *a: latents, latents, 1, torch.zeros(1, 2, 4, 2, 2), latents, latents, latents, 2, 1.0)
    with pytest.raises(ValueError, match="given_frames"):
        denoise_chunk(lambda *a: latents, latents, 4, latents, latents, latents, latents, 2, 1.0)
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(0)
