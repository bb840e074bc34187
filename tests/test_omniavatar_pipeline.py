"""OmniAvatar's chunk loop (model/omniavatar/pipeline.py) against the reference's own
(`WanInferencePipeline.forward` in scripts/inference.py, run from the pinned checkout): one chunk
and two overlapping ones, the same tiny random transformer on both sides (the reference's
`WanModel` there, ours converted from it), the same tiny VAE, a wav2vec2 as wide as the reference
fixes its speech rows (768 x 14), float32, one thread, the reference's config read at run time.

What it proves: the portrait as the first chunk's given frame and every chunk's condition, the
mask, the speech's silence, padding and per-chunk rows, the re-encoding of the previous chunk's
last decoded frames, the noise drawn per chunk, the overlap dropped. One deliberate bug (a later
chunk's speech rows starting a frame early) is shown to be caught.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.omniavatar import pipeline as pipeline_module
from model.omniavatar.layout import FIRST_CHUNK_GIVEN_FRAMES
from model.omniavatar.pipeline import LEADING_FRAMES, ChunkSettings, OmniAvatarComponents, OmniAvatarPipeline
from model.omniavatar.speech import SpeechEncoder, with_leading_silence
from model.wan_common.vae import WanVideoVAE
from tests.conftest import ASSETS
from tests.omniavatar_reference import reference_transformer, reference_video, reference_yaml, requires_omniavatar
from tests.omniavatar_tiny_models import TINY_TRANSFORMER, our_transformer, write_tiny_wav2vec2_960h
from tests.wan_tiny_models import speech_samples, well_conditioned_vae

SIDE = 32
# 21 tokens at 32x32 (one token a latent frame): chunks of 21 video frames
MAX_TOKENS = 21
OVERLAP = 5
STEPS = 2
VAE_CONFIG = dict(
    base_dim=2, z_dim=TINY_TRANSFORMER["out_dim"], dim_mult=[1, 1, 1, 1], num_res_blocks=0,
    latents_mean=[0.1, -0.2, 0.3, -0.4], latents_std=[1.5, 0.5, 2.0, 1.25],
)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("omniavatar-pipeline")
    # 768 x (12 + 2) = 10752, the speech rows' width the reference's WanModel fixes
    wav2vec = write_tiny_wav2vec2_960h(folder / "wav2vec2", hidden_size=768, layers=12)
    reference = reference_transformer(TINY_TRANSFORMER, seed=3)
    ours = our_transformer(reference.state_dict())
    vae = WanVideoVAE(well_conditioned_vae(VAE_CONFIG))
    portrait = np.asarray(Image.open(ASSETS / "portrait.jpg").convert("RGB").resize((SIDE, SIDE)))
    portrait_path = folder / "portrait.png"
    Image.fromarray(portrait).save(portrait_path)
    generator = torch.Generator().manual_seed(9)
    width = TINY_TRANSFORMER["text_dim"]
    states = {name: torch.randn(1, 7, width, generator=generator) for name in ("prompt", "negative")}
    return {"wav2vec": wav2vec, "reference": reference, "ours": ours, "vae": vae, "portrait": portrait,
            "portrait_path": portrait_path, "states": states}


def _settings() -> dict:
    yaml = reference_yaml()
    return {**yaml, "max_tokens": MAX_TOKENS, "overlap_frame": OVERLAP, "num_steps": STEPS,
            "image_sizes_720": [[SIDE, SIDE]], "max_hw": 720, "negative_prompt": "negative"}


def _ours(parts, samples: np.ndarray, seed: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Our untrimmed video [1, frames, 3, H, W] in [0, 1] (as the reference returns it), and the
    worker's frames (trimmed to the speech)."""
    yaml = reference_yaml()
    speech = SpeechEncoder.from_pretrained(parts["wav2vec"])
    components = OmniAvatarComponents(parts["ours"], parts["vae"], None, speech)  # type: ignore[arg-type]
    pipeline = OmniAvatarPipeline(components, torch.device("cpu"), torch.float32)
    pipeline.encode_prompt = parts["states"].__getitem__  # type: ignore[method-assign]
    settings = ChunkSettings(steps=STEPS, guidance_scale=yaml["guidance_scale"], audio_scale=yaml["audio_scale"],
                             overlap=OVERLAP, max_tokens=MAX_TOKENS, negative_prompt="negative")
    latent = pipeline.encode_portrait(parts["portrait"])
    pixels = torch.cat(list(pipeline.generate_pixels(latent, samples, seed, "prompt", settings, lambda *_: None)), 2)
    frames = list(pipeline.generate(latent, samples, seed, "prompt", settings, lambda *_: None))
    return ((pixels + 1) / 2).permute(0, 2, 1, 3, 4), frames


def _reference(parts, samples: np.ndarray, seed: int) -> torch.Tensor:
    return reference_video(parts["reference"], parts["vae"], parts["wav2vec"], parts["portrait_path"],
                           with_leading_silence(samples), parts["states"], _settings(), seed)


def _recording_encodes(vae: WanVideoVAE, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The pixels every VAE encode is given, in order (both sides share the VAE)."""
    encoded: list[torch.Tensor] = []
    encode = vae.encode

    def recording(pixels: torch.Tensor) -> torch.Tensor:
        encoded.append(pixels.detach().clone())
        return encode(pixels)

    monkeypatch.setattr(vae, "encode", recording)
    return encoded


@requires_omniavatar
@pytest.mark.parametrize(("seconds", "chunks"), [(0.4, 1), (0.9, 2)])
def test_the_video_is_the_reference_ones(parts, monkeypatch, seconds: float, chunks: int) -> None:
    samples = speech_samples(seconds, seed=2)
    encoded = _recording_encodes(parts["vae"], monkeypatch)
    expected = _reference(parts, samples, seed=7)
    reference_encodes = len(encoded)
    ours, frames = _ours(parts, samples, seed=7)
    chunk = 21
    assert ours.shape[1] == chunk + (chunks - 1) * (chunk - OVERLAP)  # whole chunks, before the cut
    assert ours.shape[1] >= expected.shape[1]
    torch.testing.assert_close(ours[:, : expected.shape[1]], expected, rtol=1e-4, atol=1e-4)
    # What a later chunk is given: the previous one's last OVERLAP decoded frames, encoded again.
    # (The tiny transformer couples frames weakly, so the video alone would barely show it.)
    # Ours ran twice (its untrimmed pixels, then the worker's frames): the first run's encodes.
    ours_encoded = encoded[reference_encodes : 2 * reference_encodes]
    assert reference_encodes == chunks and len(ours_encoded) == chunks
    assert ours_encoded[0].shape[2] == 1 and all(pixels.shape[2] == OVERLAP for pixels in ours_encoded[1:])
    for mine, theirs in zip(ours_encoded, encoded[:reference_encodes], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    # the worker's frames: the speech's 25 fps, after the portrait's frame and the silence's 7
    kept = np.concatenate(frames)
    assert len(kept) == round(seconds * 25) and LEADING_FRAMES == FIRST_CHUNK_GIVEN_FRAMES + 7
    reference_uint8 = (expected[0, LEADING_FRAMES : LEADING_FRAMES + len(kept)] * 255).to(torch.uint8)
    assert np.abs(kept.astype(int) - reference_uint8.permute(0, 2, 3, 1).numpy().astype(int)).max() <= 1


@requires_omniavatar
def test_a_later_chunk_given_speech_a_frame_early_is_caught(parts, monkeypatch) -> None:
    samples = speech_samples(0.9, seed=2)
    expected = _reference(parts, samples, seed=7)
    rows_of = pipeline_module.chunk_speech_rows

    def one_frame_early(rows, chunk, index, overlap):  # the deliberate bug: an off-by-one start
        if index == 0:
            return rows_of(rows, chunk, index, overlap)
        start = chunk - FIRST_CHUNK_GIVEN_FRAMES + (index - 1) * (chunk - overlap) - overlap - 1
        return rows[start : start + chunk]

    monkeypatch.setattr(pipeline_module, "chunk_speech_rows", one_frame_early)
    ours, _ = _ours(parts, samples, seed=7)
    first = 21
    torch.testing.assert_close(ours[:, :first], expected[:, :first], rtol=1e-4, atol=1e-4)
    assert (ours[:, first : expected.shape[1]] - expected[:, first:]).abs().max() > 1e-2
