"""Video VAE: the official Wan2.1 VAE layout through diffusers' AutoencoderKLWan, vs the reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.wan_common.convert_vae import convert_vae_key
from model.wan_common.vae import WanVideoVAE
from tests.wan_tiny_models import TINY_VAE, official_vae_state_dict, reference_module, tiny_vae


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    state = official_vae_state_dict(tiny_vae(seed=5))
    path = tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def vae(official: tuple[Path, dict]) -> WanVideoVAE:
    return WanVideoVAE.from_official(official[0], "cpu", torch.float32, TINY_VAE)


def _video(batch: int = 1, frames: int = 9, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=generator) * 2 - 1


def test_every_official_key_has_a_diffusers_name(official: tuple[Path, dict]) -> None:
    ours = set(tiny_vae().state_dict())
    converted = {convert_vae_key(key) for key in official[1]}
    assert converted == ours


def test_the_names_are_diffusers_own_conversion_of_the_official_file(official: tuple[Path, dict]) -> None:
    """The same names as diffusers' single-file conversion (`AutoencoderKLWan.from_single_file`),
    which model/wan_common/vae.py does not use: it converts a whole state dict at once."""
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    theirs = convert_wan_vae_to_diffusers(dict(official[1]))
    assert len(theirs) == len(official[1])
    for key, tensor in official[1].items():
        assert theirs[convert_vae_key(key)] is tensor, key


def test_encode_shapes_and_normalisation(vae: WanVideoVAE) -> None:
    video = _video(batch=2)
    latents = vae.encode(video)
    assert latents.shape == (2, 4, 3, 4, 4) and latents.dtype == torch.float32
    raw = vae.model.encode(video).latent_dist.mode()
    mean = torch.tensor(TINY_VAE["latents_mean"]).view(1, 4, 1, 1, 1)
    std = torch.tensor(TINY_VAE["latents_std"]).view(1, 4, 1, 1, 1)
    assert torch.allclose(latents, (raw - mean) / std, atol=1e-5)
    # each video of the batch is encoded on its own
    assert torch.allclose(vae.encode(video[1:]), latents[1:], atol=1e-5)


def test_decode_undoes_the_normalisation_and_clamps(vae: WanVideoVAE) -> None:
    latents = torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    pixels = vae.decode(latents)
    assert pixels.shape == (1, 3, 9, 32, 32)
    assert pixels.min() >= -1 and pixels.max() <= 1
    mean = torch.tensor(TINY_VAE["latents_mean"]).view(1, 4, 1, 1, 1)
    std = torch.tensor(TINY_VAE["latents_std"]).view(1, 4, 1, 1, 1)
    direct = vae.model.decode(latents * std + mean).sample
    assert torch.allclose(pixels, direct, atol=1e-5)


def test_save_and_load_pretrained_round_trip(tmp_path: Path, vae: WanVideoVAE) -> None:
    vae.save_pretrained(tmp_path / "vae")
    loaded = WanVideoVAE.from_pretrained(tmp_path / "vae", "cpu", torch.float32)
    video = _video(seed=2)
    assert torch.equal(loaded.encode(video), vae.encode(video))


def test_encode_and_decode_match_the_reference(
    monkeypatch: pytest.MonkeyPatch, official: tuple[Path, dict], vae: WanVideoVAE
) -> None:
    vae2_1 = reference_module(monkeypatch, "modules.vae2_1")
    reference = vae2_1.WanVAE_(
        dim=TINY_VAE["base_dim"], z_dim=TINY_VAE["z_dim"], dim_mult=TINY_VAE["dim_mult"],
        num_res_blocks=TINY_VAE["num_res_blocks"], attn_scales=[],
        temperal_downsample=[False, True, True], dropout=0.0,
    ).eval()
    reference.load_state_dict(official[1], strict=True)
    mean = torch.tensor(TINY_VAE["latents_mean"])
    scale = [mean, 1.0 / torch.tensor(TINY_VAE["latents_std"])]

    video = _video(frames=13, seed=3)
    with torch.no_grad():
        expected_latents = reference.encode(video, scale)
    latents = vae.encode(video)
    assert (latents - expected_latents).abs().max() <= 1e-4 * expected_latents.abs().max()

    with torch.no_grad():
        expected_pixels = reference.decode(expected_latents, scale).clamp(-1, 1)
    pixels = vae.decode(expected_latents)
    assert pixels.shape == expected_pixels.shape == (1, 3, 13, 32, 32)
    assert (pixels - expected_pixels).abs().max() <= 1e-4 * expected_pixels.abs().max()
    # the comparison means something only if the outputs are not saturated
    assert (expected_pixels.abs() < 0.99).float().mean() > 0.5
