"""InfiniteTalk's transformer: its audio parts on their own, the published layout's conversion, and
parity with the reference's `WanModel` (INFINITETALK_REFERENCE_REPO) with one and two speakers,
on tiny random weights in float32 on one thread."""

from __future__ import annotations

import inspect

import pytest
import torch

from model.infinitetalk.audio_projection import latent_frame_windows
from model.infinitetalk.convert_transformer import (
    convert_transformer_config,
    convert_transformer_key,
    convert_transformer_state_dict,
)
from model.infinitetalk.speaker_attention import AudioCrossAttention, rotate_1d, speaker_rope_positions
from model.infinitetalk.transformer import InfiniteTalkTransformer3DModel
from tests.infinitetalk_reference import reference_prediction, reference_transformer, requires_infinitetalk
from tests.infinitetalk_tiny_models import TINY_TRANSFORMER, transformer_inputs, two_speaker_regions
from tests.reference_harness import randomize_

HEIGHT, WIDTH = 8, 12


@pytest.fixture(scope="module")
def tiny() -> InfiniteTalkTransformer3DModel:
    torch.set_num_threads(1)
    model = InfiniteTalkTransformer3DModel(**convert_transformer_config(TINY_TRANSFORMER)).eval()
    randomize_(model, seed=1)
    return model


def _predict(model, inputs, timestep: float, regions=None) -> torch.Tensor:
    hidden = torch.cat([inputs["latents"], inputs["condition"]])[None]
    with torch.no_grad():
        return model(hidden, torch.tensor([timestep]), inputs["text"][None], inputs["image"], inputs["audio"],
                     regions).sample


# --- the audio parts ----------------------------------------------------------------------------


def test_latent_frame_windows_give_each_latent_frame_its_four_frames_rows():
    # rows numbered frame * 10 + window position, so every picked row says where it came from
    frames, window = 9, 5
    audio = (torch.arange(frames)[:, None] * 10 + torch.arange(window)[None, :]).float()
    first, later = latent_frame_windows(audio[None, :, :, None, None], vae_time_stride=4)
    assert first.flatten().tolist() == [0, 1, 2, 3, 4]
    assert later.shape == (1, 2, 8, 1, 1)
    # latent frame 1 covers video frames 1-4: frame 1 up to its centre, the centres of 2 and 3,
    # frame 4 from its centre
    assert later[0, 0].flatten().tolist() == [10, 11, 12, 22, 32, 42, 43, 44]
    assert later[0, 1].flatten().tolist() == [50, 51, 52, 62, 72, 82, 83, 84]
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        latent_frame_windows(torch.zeros(1, 8, 5, 1, 1), vae_time_stride=4)


def test_speaker_positions_scale_within_each_speakers_span_and_centre_the_background():
    attention_map = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.2],  # speaker 1
            [0.1, 0.2, 0.8, 0.3],  # speaker 2
            [0.0, 0.3, 0.1, 0.4],  # background
        ]
    )
    positions = speaker_rope_positions(attention_map, rope_range=24, rope_interval=4)
    # token 0: speaker 1 at its maximum -> 4; token 1: speaker 1, (0.5-0.1)/0.8 of [0, 4];
    # token 2: speaker 2 at its maximum -> 24; token 3: background -> 12
    expected = torch.tensor([4.0, 0.4 / 0.8 * 4, 24.0, 12.0])
    torch.testing.assert_close(positions, expected, rtol=0, atol=1e-5)


def test_rotate_1d_is_a_rotation_and_the_identity_at_zero():
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([0.0, 1.0, 2.0, 12.0, 22.0])
    rotated = rotate_1d(x, positions)
    torch.testing.assert_close(rotated[:, 0], x[:, 0])
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(rotated[:, 1:], x[:, 1:])


def test_audio_attention_keeps_each_latent_frame_to_its_own_audio():
    torch.manual_seed(0)
    attention = AudioCrossAttention(dim=16, audio_dim=8, heads=2, rope_range=24, rope_interval=4).eval()
    video = torch.randn(1, 3 * 6, 16)
    audio = torch.randn(3, 4, 8)
    changed = audio.clone()
    changed[2] += 1.0
    with torch.no_grad():
        before, after = attention(video, audio, latent_frames=3), attention(video, changed, latent_frames=3)
    torch.testing.assert_close(before[:, :12], after[:, :12])
    assert not torch.allclose(before[:, 12:], after[:, 12:])


# --- the published layout ----------------------------------------------------------------------


# The published Wan2.1-I2V-14B-480P config.json.
PUBLISHED_CONFIG = {
    "_class_name": "WanModel", "dim": 5120, "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "in_dim": 36,
    "model_type": "i2v", "num_heads": 40, "num_layers": 40, "out_dim": 16, "text_len": 512,
}


def test_the_published_config_is_our_default_model():
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(InfiniteTalkTransformer3DModel.__init__).parameters.items()
        if name != "self"
    }
    converted = convert_transformer_config(PUBLISHED_CONFIG)
    assert converted == {name: defaults[name] for name in converted}
    with pytest.raises(ValueError, match="text_len=256"):
        convert_transformer_config({**PUBLISHED_CONFIG, "text_len": 256})


def test_wan_names_convert_as_diffusers_converts_them_and_audio_names_say_what_they_are():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    block = [f"blocks.3.{kind}.{part}.{p}" for kind in ("self_attn", "cross_attn")
             for part in ("q", "k", "v", "o", "norm_q", "norm_k") for p in ("weight", "bias")]
    block += [f"blocks.3.cross_attn.{part}.{p}" for part in ("k_img", "v_img", "norm_k_img")
              for p in ("weight", "bias")]
    block += ["blocks.3.norm3.weight", "blocks.3.ffn.0.bias", "blocks.3.ffn.2.weight", "blocks.3.modulation"]
    wan = block + ["patch_embedding.weight", "text_embedding.0.weight", "text_embedding.2.bias",
                   "time_embedding.0.bias", "time_embedding.2.weight", "time_projection.1.weight",
                   "head.head.weight", "head.modulation"]
    wan += [f"img_emb.proj.{index}.{p}" for index in (0, 1, 3, 4) for p in ("weight", "bias")]
    published = {name: torch.tensor([float(index)]) for index, name in enumerate(wan)}
    theirs = convert_wan_transformer_to_diffusers(dict(published))
    ours = convert_transformer_state_dict(published)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    assert convert_transformer_key("blocks.7.audio_cross_attn.kv_linear.weight") == "blocks.7.audio_attn.to_kv.weight"
    assert convert_transformer_key("blocks.7.norm_x.bias") == "blocks.7.norm_audio.bias"
    assert convert_transformer_key("audio_proj.proj1_vf.weight") == "audio_projection.later_frames_in.weight"
    with pytest.raises(KeyError, match="blocks.0.audio_cross_attn.q_norm.weight"):
        convert_transformer_key("blocks.0.audio_cross_attn.q_norm.weight")


# --- our model ---------------------------------------------------------------------------------


def test_the_prediction_follows_the_speech_and_the_speakers(tiny):
    inputs = transformer_inputs(speakers=1, seed=3)
    prediction = _predict(tiny, inputs, 500.0)
    assert prediction.shape == inputs["latents"][None].shape
    silent = _predict(tiny, {**inputs, "audio": torch.zeros_like(inputs["audio"])}, 500.0)
    assert (prediction - silent).abs().max() > 1e-3
    two = transformer_inputs(speakers=2, seed=3)
    regions = two_speaker_regions(HEIGHT, WIDTH)
    swapped = {**two, "audio": two["audio"].flip(0)}
    assert (_predict(tiny, two, 500.0, regions) - _predict(tiny, swapped, 500.0, regions)).abs().max() > 1e-4


def test_bad_speaker_inputs_are_refused_with_the_reason(tiny):
    three = transformer_inputs(speakers=3)
    with pytest.raises(ValueError, match="one or two speakers, got audio for 3"):
        _predict(tiny, three, 500.0, two_speaker_regions(HEIGHT, WIDTH))
    with pytest.raises(ValueError, match="two speakers need speaker_regions"):
        _predict(tiny, transformer_inputs(speakers=2), 500.0)


# --- parity with the reference -----------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_and_ours():
    torch.set_num_threads(1)
    reference = reference_transformer(TINY_TRANSFORMER, seed=0)
    ours = InfiniteTalkTransformer3DModel(**convert_transformer_config(TINY_TRANSFORMER)).eval()
    ours.load_state_dict(convert_transformer_state_dict(reference.state_dict()), strict=True)
    return reference, ours


@requires_infinitetalk
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:CUDA is not available:UserWarning")
@pytest.mark.parametrize("speakers", [1, 2])
@pytest.mark.parametrize(("timestep", "seed"), [(999.0, 0), (437.25, 5)])
def test_predictions_match_the_reference(reference_and_ours, speakers: int, timestep: float, seed: int):
    reference, ours = reference_and_ours
    inputs = transformer_inputs(latent_frames=3, height=HEIGHT, width=WIDTH, speakers=speakers, seed=seed)
    regions = two_speaker_regions(HEIGHT, WIDTH) if speakers == 2 else None
    expected = reference_prediction(reference, inputs, timestep, regions)
    torch.testing.assert_close(_predict(ours, inputs, timestep, regions), expected, rtol=0, atol=1e-5)


@requires_infinitetalk
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:CUDA is not available:UserWarning")
def test_every_published_parameter_has_a_place_and_wan_names_are_diffusers(reference_and_ours):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    reference, ours = reference_and_ours
    published = reference.state_dict()
    converted = convert_transformer_state_dict(published)
    assert converted.keys() == ours.state_dict().keys()
    wan_only = {key: value for key, value in published.items() if "audio" not in key and "norm_x" not in key}
    theirs = convert_wan_transformer_to_diffusers(dict(wan_only))
    assert theirs.keys() == convert_transformer_state_dict(wan_only).keys()
