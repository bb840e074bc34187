"""The fast mode's VAE history limited to what reaches a clip's pixels (fast_pipeline._ClipDecoder):
the receptive fields derived from the VAE config (vae.decoder_history_latents and
encoder_history_latents) against perturbations of a tiny VAE with the Wan2.1 VAE's temporal
structure, and the trimmed history against the reference's whole-history way over several clips,
to the bit in float32 on one thread."""

from __future__ import annotations

import inspect
import types

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from model.wan_common.vae import StreamingDecoder, WanVideoVAE, decoder_history_latents, encoder_history_latents
from model.wan_s2v import fast_pipeline
from model.wan_s2v.config import FAST_LATENT_FRAMES_PER_BLOCK
from model.wan_s2v.fast_pipeline import HISTORY_FRAMES, FastSampler, history_window
from tests.test_wan_pipeline import FAST_VAE, tiny_pipeline
from tests.wan_tiny_models import tiny_vae

# The Wan2.1 VAE's temporal structure (AutoencoderKLWan's defaults, which the project loads
# `Wan2.1_VAE.pth` into: 4 levels, 2 residual blocks, temporal down/upsampling in two of them) with
# tiny channels; 16 latent channels for the pipeline test (the transformer's).
WAN21_TEMPORAL_VAE = dict(FAST_VAE, base_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
PIXELS = 16  # 2 x 2 latents: the time axis is what matters


def default_config() -> types.SimpleNamespace:
    return types.SimpleNamespace(**{
        name: parameter.default
        for name, parameter in inspect.signature(AutoencoderKLWan.__init__).parameters.items() if name != "self"
    })


@pytest.fixture(scope="module")
def vae() -> WanVideoVAE:
    return WanVideoVAE(tiny_vae(config=WAN21_TEMPORAL_VAE))


def test_the_fields_of_the_wan21_vae():
    config = default_config()
    layout = (config.num_res_blocks, config.dim_mult, config.temperal_downsample)
    assert layout == (2, [1, 2, 4, 4], [False, True, True])
    assert (decoder_history_latents(config), encoder_history_latents(config)) == (38, 28)
    tiny = tiny_vae(config=WAN21_TEMPORAL_VAE).config
    assert (decoder_history_latents(tiny), encoder_history_latents(tiny)) == (38, 28)


def decoded_clip(vae: WanVideoVAE, history: torch.Tensor, clip: torch.Tensor) -> torch.Tensor:
    decoder = StreamingDecoder(vae)
    decoder.decode(history)
    return decoder.decode(clip)


def test_the_decoder_field_is_the_measured_one(vae, one_cpu_thread):
    """A clip's pixels depend on exactly the last R history latents: perturbing the latent before
    them changes nothing (to the bit), perturbing the first of them changes the clip; decoding only
    them gives the clip's pixels to the bit, one fewer does not."""
    reach = decoder_history_latents(vae.model.config)
    generator = torch.Generator().manual_seed(0)
    history = torch.randn(1, 16, reach + 8, PIXELS // 8, PIXELS // 8, generator=generator)
    clip = torch.randn(1, 16, 6, PIXELS // 8, PIXELS // 8, generator=generator)
    pixels = decoded_clip(vae, history, clip)

    def perturbed(latent: int) -> torch.Tensor:
        changed = history.clone()
        changed[:, :, latent] += 1.0
        return decoded_clip(vae, changed, clip)

    assert torch.equal(perturbed(history.shape[2] - reach - 1), pixels)
    assert not torch.equal(perturbed(history.shape[2] - reach), pixels)  # the first frame, slightly
    assert torch.equal(decoded_clip(vae, history[:, :, -reach:], clip), pixels)
    assert not torch.equal(decoded_clip(vae, history[:, :, -(reach - 1):], clip), pixels)


def test_the_encoder_field_is_the_measured_one(vae, one_cpu_thread):
    """Encoding the video's last 1 + 4k frames gives its latents from the window's m-th after the
    first on to the bit (the pixels before them change nothing), and not the one before."""
    after = encoder_history_latents(vae.model.config)
    generator = torch.Generator().manual_seed(1)
    frames = 1 + 4 * (after + 12)
    video = torch.rand(1, 3, frames, PIXELS, PIXELS, generator=generator) * 2 - 1
    latents = vae.encode(video)
    window = 1 + 4 * (after + 3)  # latents after + 1 .. after + 3 after its first: 1 + after + 3 of them
    windowed = vae.encode(video[:, :, -window:])
    assert torch.equal(windowed[:, :, after:], latents[:, :, -(windowed.shape[2] - after):])
    assert not torch.equal(windowed[:, :, after - 1], latents[:, :, -(windowed.shape[2] - after + 1)])
    changed = video.clone()
    changed[:, :, : frames - window] = 0.0
    kept = windowed.shape[2] - after
    assert torch.equal(vae.encode(changed)[:, :, -kept:], latents[:, :, -kept:])


def test_the_window_of_the_wan21_vae(vae):
    assert history_window(vae, 92) == (38, 1 + 4 * (38 - 1 + 28))
    assert history_window(vae, 92)[1] < HISTORY_FRAMES


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> FastSampler:
    # the fast-mode tests' VAE (LEAN_VAE): one resnet in each decoder level, none in the encoder's, so
    # a window of 22 latents and 133 frames of the 92 and 365 (the Wan2.1 layout's own is checked
    # above); cheaper, and trimmed all the same
    sampler = FastSampler(tiny_pipeline(tmp_path_factory.mktemp("tiny")))
    assert history_window(sampler.vae, 1 + (HISTORY_FRAMES - 1) // 4) == (22, 133)
    return sampler


def test_a_trimmed_history_decodes_the_clips_of_the_whole_one(sampler, one_cpu_thread):
    """Three clips of blocks (the last two behind re-encoded history, the last one block) decoded to
    the bit as the reference's whole-history encode and decode do. The denoiser never sees the
    decoded pixels (generate_pixels conditions on the portrait's latents only), so the same block
    latents in give the same video out; 16 x 16 pixels, as above, since the time axis is what matters."""
    image = np.random.default_rng(1).integers(0, 256, size=(90, 80, 3), dtype=np.uint8)
    portrait = sampler.encode_portrait(image, PIXELS, PIXELS)
    trimmed = fast_pipeline._ClipDecoder(sampler.vae, portrait)
    whole = fast_pipeline._ClipDecoder(sampler.vae, portrait, full_history=True)
    assert (trimmed.decoded_latents, trimmed.encoded_frames) == (22, 133)
    assert (whole.decoded_latents, whole.encoded_frames) == (portrait.history_latents.shape[2], HISTORY_FRAMES)
    generator = torch.Generator().manual_seed(2)
    channels = portrait.history_latents.shape[1]
    for block in range(2 * fast_pipeline.BLOCKS_PER_CLIP + 1):
        latents = torch.randn(1, channels, FAST_LATENT_FRAMES_PER_BLOCK, PIXELS // 8, PIXELS // 8, generator=generator)
        pixels = trimmed.decode(latents, block)
        assert pixels.shape[2] > 0
        assert torch.equal(pixels, whole.decode(latents, block)), f"block {block}"
