"""The loader on a tiny checkpoint written in the official layout, and the diffusers layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.wan_s2v import loader as loader_module
from model.wan_s2v.config import TRANSFORMER_INDEX_FILE
from model.wan_s2v.convert_transformer import convert_transformer_key
from model.wan_s2v.loader import WanS2VComponents, load_components, save_diffusers_layout
from tests.wan_tiny_models import (
    TINY_OFFICIAL_TRANSFORMER_CONFIG,
    TINY_T5,
    TINY_TEXT_LEN,
    TINY_VAE,
    official_t5_state_dict,
    official_transformer_state_dict,
    official_vae_state_dict,
    speech_samples,
    tiny_transformer_from_official_config,
    tiny_umt5,
    tiny_vae,
    write_official_checkpoint,
)


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    transformer = official_transformer_state_dict(tiny_transformer_from_official_config(seed=7))
    official = {
        "transformer": transformer,
        "vae": official_vae_state_dict(tiny_vae(seed=8)),
        "t5": official_t5_state_dict(tiny_umt5(seed=9)),
    }
    folder = write_official_checkpoint(
        tmp_path_factory.mktemp("official"), transformer, TINY_OFFICIAL_TRANSFORMER_CONFIG,
        official["vae"], official["t5"], shard_bytes=200_000,
    )
    return folder, official


@pytest.fixture(scope="module")
def tiny_configs(request: pytest.FixtureRequest):
    """The official file carries no config for the VAE and T5: point the loader at tiny ones."""
    patcher = pytest.MonkeyPatch()
    vae_from_official = loader_module.WanVideoVAE.from_official.__func__
    text_from_official = loader_module.TextEncoder.from_official.__func__
    patcher.setattr(loader_module.WanVideoVAE, "from_official", classmethod(
        lambda cls, path, device, dtype: vae_from_official(cls, path, device, dtype, TINY_VAE)))
    patcher.setattr(loader_module.TextEncoder, "from_official", classmethod(
        lambda cls, path, tok, device, dtype: text_from_official(cls, path, tok, device, dtype, TINY_T5)))
    yield
    patcher.undo()


@pytest.fixture(scope="module")
def components(official_dir, tiny_configs) -> WanS2VComponents:
    return load_components(official_dir[0], "cpu", torch.bfloat16)


def test_official_layout_has_several_shards(official_dir) -> None:
    assert len(list(official_dir[0].glob("diffusion_pytorch_model-*-of-*.safetensors"))) >= 3
    assert (official_dir[0] / TRANSFORMER_INDEX_FILE).is_file()


def test_every_tensor_lands_renamed_with_the_requested_dtype_and_device(official_dir, components) -> None:
    _, official = official_dir
    transformer = components.transformer.state_dict()
    assert len(transformer) == len(official["transformer"])
    for key, tensor in official["transformer"].items():
        loaded = transformer[convert_transformer_key(key)]
        assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu"
        assert torch.equal(loaded, tensor.to(torch.bfloat16)), key
    text = components.text_encoder.model.state_dict()
    assert text["shared.weight"].dtype == torch.bfloat16
    assert torch.equal(text["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"],
                       official["t5"]["blocks.1.ffn.gate.0.weight"].to(torch.bfloat16))
    # the reference runs the VAE and wav2vec2 in float32, whatever the transformer's dtype
    vae = components.vae.model.state_dict()
    assert all(tensor.dtype == torch.float32 for tensor in vae.values())
    assert torch.equal(vae["decoder.up_blocks.1.resnets.0.conv_shortcut.weight"],
                       official["vae"]["decoder.upsamples.4.shortcut.weight"])
    assert components.speech_encoder.model.dtype == torch.float32
    for model in (components.transformer, components.vae.model, components.text_encoder.model):
        assert not any(tensor.is_meta for tensor in model.state_dict().values())
        assert not any(param.requires_grad for param in model.parameters())
    assert not any(buffer.is_meta for buffer in components.transformer.buffers())


def test_loaded_components_run(components) -> None:
    components.text_encoder.text_len = TINY_TEXT_LEN
    assert components.text_encoder.encode(["a person speaking"]).shape == (1, TINY_TEXT_LEN, 32)
    assert components.speech_encoder.encode(speech_samples(1.0)).shape[:2] == (3, 32)
    latents = components.vae.encode(torch.zeros(1, 3, 5, 16, 16))
    assert latents.shape == (1, 4, 2, 2, 2)


def test_a_missing_transformer_tensor_is_reported(tmp_path: Path, official_dir, tiny_configs) -> None:
    folder, official = official_dir
    transformer = dict(official["transformer"])
    transformer.pop("head.modulation")
    broken = write_official_checkpoint(
        tmp_path / "broken", transformer, TINY_OFFICIAL_TRANSFORMER_CONFIG, official["vae"], official["t5"],
        shard_bytes=10**9,
    )
    with pytest.raises(ValueError, match="scale_shift_table"):
        load_components(broken, "cpu", torch.float32)


def test_diffusers_layout_round_trip(tmp_path: Path, components) -> None:
    save_diffusers_layout(components, tmp_path / "diffusers")
    assert (tmp_path / "diffusers" / "model_index.json").is_file()
    loaded = load_components(tmp_path / "diffusers", "cpu", torch.bfloat16)
    pairs = [
        (components.transformer, loaded.transformer),
        (components.vae.model, loaded.vae.model),
        (components.text_encoder.model, loaded.text_encoder.model),
        (components.speech_encoder.model, loaded.speech_encoder.model),
    ]
    for original, reloaded in pairs:
        before, after = original.state_dict(), reloaded.state_dict()
        assert before.keys() == after.keys()
        for key in before:
            assert after[key].dtype == before[key].dtype and torch.equal(after[key], before[key]), key
    # json turns tuples into lists; the values must survive
    for name in ("num_layers", "num_attention_heads", "attention_head_dim", "audio_inject_layers", "patch_size"):
        assert _plain(loaded.transformer.config[name]) == _plain(components.transformer.config[name]), name


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value
