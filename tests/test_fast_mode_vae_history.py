"""The fast mode's VAE history limited to what reaches a clip's pixels (fast_pipeline._ClipDecoder):
the receptive fields derived from the VAE config (vae.decoder_history_latents and
encoder_history_latents) against perturbations of a tiny VAE with the Wan2.1 VAE's temporal
structure, and the trimmed history against the reference's whole-history way over several clips,
to the bit in float32 on one thread."""

from __future__ import annotations

import inspect
import itertools
import types
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan

from model.wan_common.vae import (
    StreamingDecoder,
    StreamingEncoder,
    WanVideoVAE,
    decoder_history_latents,
    encoder_history_latents,
)
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


def test_a_streamed_encode_is_one_encode(vae, one_cpu_thread):
    """Frames given a few at a time, in groups that do not follow the VAE's (the first call's first
    frame alone, then 4 at a time), encode to the latents of one encode of them all, to the bit;
    only the last `keep` are kept."""
    generator = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 1 + 4 * 9, PIXELS, PIXELS, generator=generator) * 2 - 1
    whole = vae.encode(video)
    encoder = StreamingEncoder(vae, keep=6)
    cuts = [0, 3, 4, 11, 11, 24, 37]
    assert [encoder.encode(video[:, :, start:end]) for start, end in itertools.pairwise(cuts)] == [1, 0, 2, 0, 3, 4]
    assert torch.equal(encoder.last_latents(6), whole[:, :, -6:])
    with pytest.raises(ValueError, match="7 latents asked for; kept: 6"):
        encoder.last_latents(7)


def test_a_forked_decoder_goes_on_while_its_origin_stays(vae, one_cpu_thread):
    generator = torch.Generator().manual_seed(4)
    latents = torch.randn(1, 16, 7, PIXELS // 8, PIXELS // 8, generator=generator)
    whole = StreamingDecoder(vae).decode(latents)
    origin = StreamingDecoder(vae)
    head = origin.decode(latents[:, :, :3])
    fork = origin.fork()
    assert torch.equal(torch.cat([head, fork.decode(latents[:, :, 3:])], dim=2), whole)
    assert torch.equal(torch.cat([head, origin.decode(latents[:, :, 3:])], dim=2), whole)


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> FastSampler:
    # the fast-mode tests' VAE (LEAN_VAE): one resnet in each decoder level, none in the encoder's, so
    # a window of 22 latents and 133 frames of the 92 and 365 (the Wan2.1 layout's own is checked
    # above); cheaper, and trimmed all the same
    sampler = FastSampler(tiny_pipeline(tmp_path_factory.mktemp("tiny")))
    assert history_window(sampler.vae, 1 + (HISTORY_FRAMES - 1) // 4) == (22, 133)
    return sampler


def reference_clips(vae: WanVideoVAE, portrait, clips: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Live Avatar's way, clip by clip: each decoded after the whole encode of the video's last 365
    frames (the portrait's before the first clip), the first clip behind the portrait's own history
    latents and its first 3 frames dropped."""
    history = portrait.pixels.expand(-1, -1, HISTORY_FRAMES, -1, -1)
    for index, clip in enumerate(clips):
        history_latents = portrait.history_latents if index == 0 else vae.encode(history)
        pixels = vae.decode(torch.cat([history_latents, clip], dim=2))[:, :, -4 * clip.shape[2] :]
        if index == 0:
            pixels = pixels[:, :, fast_pipeline.FIRST_CLIP_DROPPED_FRAMES :]
        yield pixels
        history = torch.cat([history, pixels], dim=2)[:, :, -HISTORY_FRAMES:]


def clip_decoder_output(vae: WanVideoVAE, portrait, clips: list[torch.Tensor]) -> list[torch.Tensor]:
    blocks = [block for clip in clips for block in clip.split(FAST_LATENT_FRAMES_PER_BLOCK, dim=2)]
    decoder = fast_pipeline._ClipDecoder(vae, portrait, len(blocks))
    pixels = [decoder.decode(latents, index) for index, latents in enumerate(blocks)]
    per_clip = fast_pipeline.BLOCKS_PER_CLIP
    return [torch.cat(pixels[start : start + per_clip], dim=2) for start in range(0, len(pixels), per_clip)]


@pytest.fixture(scope="module")
def four_clips(sampler):
    """A portrait and the latents of four clips, the last one block long, at 16 x 16 pixels (the
    time axis is what matters), with the reference's way's pixels for them."""
    image = np.random.default_rng(1).integers(0, 256, size=(90, 80, 3), dtype=np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        portrait = sampler.encode_portrait(image, PIXELS, PIXELS)
        generator = torch.Generator().manual_seed(2)
        channels = portrait.history_latents.shape[1]
        lengths = [fast_pipeline.LATENT_FRAMES_PER_CLIP] * 3 + [FAST_LATENT_FRAMES_PER_BLOCK]
        clips = [torch.randn(1, channels, n, PIXELS // 8, PIXELS // 8, generator=generator) for n in lengths]
        return portrait, clips, list(reference_clips(sampler.vae, portrait, clips))
    finally:
        torch.set_num_threads(threads)


def test_the_clips_equal_the_references_whole_history_way(sampler, four_clips, one_cpu_thread):
    """Four clips of blocks (each behind a continued encode and decoder) decoded to the bit as the
    reference's whole-history encode and decode do. The denoiser never sees the decoded pixels
    (generate_pixels conditions on the portrait's latents only), so the same block latents in give
    the same video out."""
    portrait, clips, expected = four_clips
    got = clip_decoder_output(sampler.vae, portrait, clips)
    for index, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert ours.shape == theirs.shape and torch.equal(ours, theirs), f"clip {index}"


@pytest.mark.parametrize("bug", ["window one frame late", "encoder reach one latent short", "clip decoder not forked"])
def test_the_equality_catches_a_deliberate_bug(sampler, four_clips, one_cpu_thread, monkeypatch, bug):
    portrait, clips, expected = four_clips
    decoded, encoded = history_window(sampler.vae, portrait.history_latents.shape[2])
    if bug == "window one frame late":
        monkeypatch.setattr(fast_pipeline, "history_window", lambda *_: (decoded, encoded - 1))
    elif bug == "encoder reach one latent short":
        monkeypatch.setattr(fast_pipeline, "history_window", lambda *_: (decoded, encoded - 4))
    else:
        monkeypatch.setattr(StreamingDecoder, "fork", lambda decoder: decoder)
    got = clip_decoder_output(sampler.vae, portrait, clips)
    assert not all(torch.equal(ours, theirs) for ours, theirs in zip(got, expected, strict=True))


def test_a_blocks_frames_are_encoded_after_they_have_left(sampler, four_clips, monkeypatch):
    """The history encode never delays a block: a block's frames are encoded when the next block is
    decoded, and the last clip's frames, history for nothing, are not encoded at all."""
    portrait, clips, _ = four_clips
    encoded: list[int] = []
    encode = StreamingEncoder.encode

    def counted(encoder, pixels):
        encoded.append(pixels.shape[2])
        return encode(encoder, pixels)

    monkeypatch.setattr(StreamingEncoder, "encode", counted)
    blocks = [block for clip in clips for block in clip.split(FAST_LATENT_FRAMES_PER_BLOCK, dim=2)]
    decoder = fast_pipeline._ClipDecoder(sampler.vae, portrait, len(blocks))
    frames_out = []
    for index, latents in enumerate(blocks):
        frames_out.append(decoder.decode(latents, index).shape[2])
        assert sum(encoded) == sum(frames_out[:-1]) + (decoder._portrait_frames if index else 0), f"block {index}"
    assert decoder._unencoded is None  # the last clip's frames were never kept for encoding
