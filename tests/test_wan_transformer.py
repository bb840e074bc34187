"""The Wan2.2-S2V transformer on CPU at toy size: shapes, batching, config round trip, key names.

Numerical equality with the official implementation is in test_wan_transformer_reference.py.
"""

from __future__ import annotations

import pytest
import torch

from model.wan_s2v._transformer_motion import FramePackMotionEmbedding
from model.wan_s2v.convert_transformer import (
    convert_transformer_config,
    convert_transformer_key,
    convert_transformer_state_dict,
)
from model.wan_s2v.transformer import WanS2VTransformer3DModel

TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "ffn_dim": 48,
    "num_layers": 3,
    "freq_dim": 16,
    "text_dim": 24,
    "text_len": 12,
    "audio_dim": 12,
    "num_audio_layers": 5,
    "num_audio_tokens": 2,
    "audio_inject_layers": (0, 2),
}
FRAMES, HEIGHT, WIDTH = 3, 16, 24
AUDIO_FRAMES = 12  # ceil((12 + 73) / 4) - 19 = 3 latent frames


@pytest.fixture(scope="module")
def model() -> WanS2VTransformer3DModel:
    torch.manual_seed(0)
    return WanS2VTransformer3DModel(**TINY).eval()


def _inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    return {
        "hidden_states": randn(batch, 16, FRAMES, HEIGHT, WIDTH),
        "timestep": torch.linspace(999.0, 500.0, batch),
        "encoder_hidden_states": randn(batch, 7, TINY["text_dim"]),
        "ref_latents": randn(batch, 16, 1, HEIGHT, WIDTH),
        "motion_latents": randn(batch, 16, 19, HEIGHT, WIDTH),
        "audio_features": randn(batch, TINY["num_audio_layers"], TINY["audio_dim"], AUDIO_FRAMES),
        "pose_latents": randn(batch, 16, FRAMES, HEIGHT, WIDTH),
    }


@pytest.mark.parametrize("drop_motion_frames", [True, False])
def test_predicts_the_clip_latents_shape(model, drop_motion_frames: bool) -> None:
    inputs = _inputs(batch=1)
    with torch.no_grad():
        output = model(**inputs, drop_motion_frames=drop_motion_frames)
    assert output.shape == inputs["hidden_states"].shape
    assert output.dtype == torch.float32
    assert torch.isfinite(output).all()


def test_batch_of_two_equals_two_single_calls(model) -> None:
    """The pipeline batches the conditional and unconditional passes."""
    batch = _inputs(batch=2)
    batch["audio_features"][1] = 0.0  # the unconditional half
    with torch.no_grad():
        together = model(**batch)
        apart = [model(**{name: value[i : i + 1] for name, value in batch.items()}) for i in range(2)]
    torch.testing.assert_close(together, torch.cat(apart), rtol=1e-5, atol=1e-5)
    assert (together[0] - together[1]).abs().max() > 1e-3


def test_missing_pose_is_an_all_zero_pose(model) -> None:
    inputs = _inputs(batch=1)
    without = {name: value for name, value in inputs.items() if name != "pose_latents"}
    with torch.no_grad():
        zero_pose = model(**without, pose_latents=torch.zeros_like(inputs["pose_latents"]))
        no_pose = model(**without)
        with_pose = model(**inputs)
    torch.testing.assert_close(no_pose, zero_pose, rtol=1e-5, atol=1e-5)
    assert (with_pose - no_pose).abs().max() > 1e-3


def test_short_prompts_are_padded_to_the_text_length(model) -> None:
    inputs = _inputs(batch=1)
    padded = torch.nn.functional.pad(inputs["encoder_hidden_states"], (0, 0, 0, TINY["text_len"] - 7))
    with torch.no_grad():
        short = model(**inputs)
        full = model(**{**inputs, "encoder_hidden_states": padded})
    torch.testing.assert_close(short, full)


def test_audio_that_does_not_cover_the_clip_is_refused(model) -> None:
    inputs = _inputs(batch=1)
    inputs["audio_features"] = inputs["audio_features"][..., :4]
    with pytest.raises(ValueError, match="latent frames"):
        model(**inputs)


def _hyper_parameters(config) -> dict:
    # JSON turns tuples into lists; keys starting with "_" are diffusers' bookkeeping
    return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items() if key[0] != "_"}


def test_config_round_trip(model, tmp_path) -> None:
    model.save_pretrained(tmp_path)
    loaded = WanS2VTransformer3DModel.from_pretrained(tmp_path).eval()
    assert _hyper_parameters(loaded.config) == _hyper_parameters(model.config)
    inputs = _inputs(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs), model(**inputs), rtol=0, atol=0)


def test_built_on_meta_and_loaded_by_assignment(model) -> None:
    """How the loader builds the 14B model: no real tensor until the weights are assigned."""
    with torch.device("meta"):
        empty = WanS2VTransformer3DModel(**TINY)
    empty.load_state_dict(model.state_dict(), strict=True, assign=True)
    inputs = _inputs(batch=1)
    with torch.no_grad():
        torch.testing.assert_close(empty.eval()(**inputs), model(**inputs), rtol=0, atol=0)


def test_rotary_tables_are_reused_across_steps(model) -> None:
    inputs = _inputs(batch=1)
    grids = FramePackMotionEmbedding.position_grids(HEIGHT, WIDTH)
    first = model.rope(grids, torch.device("cpu"))
    assert model.rope(list(grids), torch.device("cpu")) is first
    assert model.rope(grids[:2], torch.device("cpu")) is not first
    assert first[0].shape == (1, sum(grid.num_tokens for grid in grids), 1, TINY["attention_head_dim"])
    with torch.no_grad():
        model(**inputs)


def test_motion_history_positions() -> None:
    """FramePack tokens sit in the past: the newest frame at -1, the 2x frames at -3, the 4x at -19..-4."""
    recent, middle, old = FramePackMotionEmbedding.position_grids(16, 32)
    assert set(recent.positions()[:, 0]) == {-1}
    assert set(middle.positions()[:, 0]) == {-3}
    assert sorted(set(old.positions()[:, 0])) == [-19, -14, -9, -4]
    # coarse tokens spread over the full-resolution area (8 x 16 positions)
    assert sorted(set(middle.positions()[:, 1])) == [0, 2, 4, 7]  # truncated, like the official model
    assert sorted(set(old.positions()[:, 2])) == [0, 5, 10, 15]
    assert old.num_tokens == 4 * 2 * 4


@pytest.mark.parametrize(
    ("official", "ours"),
    [
        ("blocks.7.self_attn.q.weight", "blocks.7.self_attn.to_q.weight"),
        ("blocks.7.cross_attn.o.bias", "blocks.7.cross_attn.to_out.0.bias"),
        ("blocks.0.self_attn.norm_k.weight", "blocks.0.self_attn.norm_k.weight"),
        ("blocks.39.norm3.weight", "blocks.39.cross_attn_norm.weight"),
        ("blocks.3.ffn.0.weight", "blocks.3.ffn.net.0.proj.weight"),
        ("blocks.3.ffn.2.bias", "blocks.3.ffn.net.2.bias"),
        ("blocks.12.modulation", "blocks.12.scale_shift_table"),
        ("head.head.weight", "proj_out.weight"),
        ("head.modulation", "scale_shift_table"),
        ("cond_encoder.bias", "pose_embedding.bias"),
        ("trainable_cond_mask.weight", "token_type_embedding.weight"),
        ("time_projection.1.weight", "time_proj.weight"),
        ("text_embedding.2.bias", "text_embedder.linear_2.bias"),
        ("frame_packer.proj.weight", "motion_embedding.proj_1x.weight"),
        ("frame_packer.proj_4x.bias", "motion_embedding.proj_4x.bias"),
        ("casual_audio_encoder.weights", "audio_encoder.layer_weights"),
        ("casual_audio_encoder.encoder.conv3.conv.weight", "audio_encoder.conv_down_2.weight"),
        ("casual_audio_encoder.encoder.padding_tokens", "audio_encoder.padding_token"),
        ("audio_injector.injector.11.k.weight", "audio_injectors.11.attn.to_k.weight"),
        ("audio_injector.injector_adain_layers.2.linear.bias", "audio_injectors.2.norm.linear.bias"),
    ],
)
def test_official_key_names(official: str, ours: str) -> None:
    assert convert_transformer_key(official) == ours


def test_converted_names_exist_in_the_model(model) -> None:
    ours = set(model.state_dict())
    official = ["blocks.2.self_attn.q.weight", "audio_injector.injector.1.norm_q.weight", "head.modulation"]
    assert set(convert_transformer_state_dict({key: torch.zeros(1) for key in official})) <= ours


def test_unknown_official_keys_are_refused() -> None:
    with pytest.raises(KeyError, match="blocks.0.self_attn.qkv.weight"):
        convert_transformer_key("blocks.0.self_attn.qkv.weight")


def test_official_config_conversion() -> None:
    official = {
        "dim": 64,
        "num_heads": 4,
        "ffn_dim": 96,
        "num_layers": 6,
        "cond_dim": 16,
        "audio_dim": 1024,
        "enable_adain": True,
        "audio_inject_layers": [4, 0],
        "zero_timestep": True,
        "enable_motioner": False,
        "enable_framepack": True,
        "text_dim": 77,  # ignored by the official model too
    }
    config = convert_transformer_config(official)
    assert config["num_attention_heads"] == 4 and config["attention_head_dim"] == 16
    assert config["audio_inject_layers"] == (0, 4)
    assert config["text_dim"] == 4096
    WanS2VTransformer3DModel(**config)

    with pytest.raises(ValueError, match="enable_motioner"):
        convert_transformer_config({**official, "enable_motioner": True})
    with pytest.raises(ValueError, match="adain_mode"):
        convert_transformer_config({**official, "adain_mode": "attn_norm_and_out"})
