"""OmniAvatar's transformer (diffusers' Wan2.1-T2V + the audio pack) against the reference's
`WanModel` (wan_video_dit.py), tiny random weights converted from its state-dict layout."""

from __future__ import annotations

import pytest
import torch

from model.omniavatar.audio_pack import AudioPack
from model.omniavatar.convert_transformer import convert_transformer_key
from model.omniavatar.transformer import OmniAvatarTransformer3DModel
from tests.omniavatar_reference import (
    omniavatar_module,
    reference_prediction,
    reference_transformer,
    requires_omniavatar,
)
from tests.omniavatar_tiny_models import (
    SPEECH_FEATURE_DIM,
    TINY_TRANSFORMER,
    our_prediction,
    our_transformer,
    our_transformer_arguments,
    transformer_inputs,
)
from tests.reference_harness import randomize_


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, OmniAvatarTransformer3DModel]:
    torch.set_num_threads(1)
    reference = reference_transformer(TINY_TRANSFORMER)
    return reference, our_transformer(reference.state_dict())


@requires_omniavatar
def test_prediction_is_the_reference_one(models) -> None:
    reference, ours = models
    inputs = transformer_inputs()
    expected = reference_prediction(reference, inputs)
    found = our_prediction(ours, inputs)
    assert found.shape == expected.shape == inputs["latents"].shape
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-5)


@requires_omniavatar
def test_speech_and_silence_both_match_and_differ(models) -> None:
    reference, ours = models
    inputs = transformer_inputs(latent_frames=2, height=4, width=6, seed=1)
    # the audio guidance's pass: the same call with the speech rows zeroed
    silent = {**inputs, "speech": torch.zeros_like(inputs["speech"])}
    spoken, quiet = our_prediction(ours, inputs), our_prediction(ours, silent)
    torch.testing.assert_close(spoken, reference_prediction(reference, inputs), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(quiet, reference_prediction(reference, silent), rtol=1e-4, atol=1e-5)
    assert (spoken - quiet).abs().max() > 1e-3


@requires_omniavatar
def test_audio_pack_is_the_reference_one() -> None:
    reference = omniavatar_module("models.audio_pack").AudioPack(SPEECH_FEATURE_DIM, [4, 1, 1], 8, layernorm=True)
    randomize_(reference, seed=3)
    ours = AudioPack(SPEECH_FEATURE_DIM, 8)
    ours.load_state_dict(
        {"proj." + key.split(".", 1)[1] if key.startswith("proj") else "norm." + key.split(".", 1)[1]: value
         for key, value in reference.state_dict().items()}
    )
    speech = torch.randn(1, 9, SPEECH_FEATURE_DIM, generator=torch.Generator().manual_seed(4))
    # the reference's input, as WanModel.forward builds it: first row three more times, then [b, c, t, 1, 1]
    video = speech.permute(0, 2, 1)[:, :, :, None, None]
    video = torch.cat([video[:, :, :1].repeat(1, 1, 3, 1, 1), video], 2)
    with torch.no_grad():
        expected = reference(video)[:, :, 0, 0]
        torch.testing.assert_close(ours(speech), expected, rtol=1e-5, atol=1e-6)


def test_speech_of_the_wrong_length_is_refused() -> None:
    model = OmniAvatarTransformer3DModel(**our_transformer_arguments(TINY_TRANSFORMER), audio_feature_dim=16)
    inputs = transformer_inputs(latent_frames=2, height=4, width=4)
    with pytest.raises(ValueError, match=r"needs \[1, 5, features\]"):
        model(torch.cat([inputs["latents"], inputs["condition"]], 1), inputs["timestep"], inputs["text"],
              torch.zeros(1, 6, 16))
    with pytest.raises(ValueError, match="4n \\+ 1"):
        AudioPack(16, 4)(torch.zeros(1, 6, 16))


def test_reference_names_map_to_ours_and_image_parts_are_refused() -> None:
    assert convert_transformer_key("audio_cond_projs.3.weight") == "audio_injection.block_projections.3.weight"
    assert convert_transformer_key("audio_proj.norm_out.bias") == "audio_injection.pack.norm.bias"
    assert convert_transformer_key("blocks.7.self_attn.q.weight") == "blocks.7.attn1.to_q.weight"
    with pytest.raises(KeyError, match="I2V"):
        convert_transformer_key("blocks.0.cross_attn.k_img.weight")
    with pytest.raises(KeyError, match="OmniAvatar"):
        convert_transformer_key("audio_proj.something.weight")
