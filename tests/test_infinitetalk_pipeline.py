"""InfiniteTalk's generation: the clip plan and padding on their own, and parity of one clip's
denoising and of chained clips with the reference's `generate_infinitetalk`
(INFINITETALK_REFERENCE_REPO), on tiny random weights in float32 on one thread."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from model.infinitetalk.colour import lab_to_rgb, match_colours, rgb_to_lab
from model.infinitetalk.config import COLOUR_CORRECTION_STRENGTH
from model.infinitetalk.convert_transformer import convert_transformer_config, convert_transformer_state_dict
from model.infinitetalk.layout import cover_and_crop, speaker_regions
from model.infinitetalk.pipeline import (
    FAST,
    QUALITY,
    Prompts,
    Sampling,
    first_frame_mask,
    generate_clips,
    pad_speech_end,
    plan_clips,
)
from model.infinitetalk.transformer import InfiniteTalkTransformer3DModel
from model.wan_common.vae import WanVideoVAE
from tests.infinitetalk_reference import (
    reference_fast_arguments,
    reference_generate,
    reference_match_colours,
    reference_run_arguments,
    reference_transformer,
    requires_infinitetalk,
)
from tests.infinitetalk_tiny_models import (
    AUDIO_CHANNELS,
    AUDIO_LAYERS,
    IMAGE_DIM,
    IMAGE_TOKENS,
    TINY_TRANSFORMER,
)
from tests.reference_harness import randomize_
from tests.wan_tiny_models import TINY_VAE, well_conditioned_vae

# the published latent width (16 channels): the reference draws its noise with 16 channels
LATENT_CHANNELS = 16
PIPELINE_TRANSFORMER = {**TINY_TRANSFORMER, "in_dim": 2 * LATENT_CHANNELS + 4, "out_dim": LATENT_CHANNELS}
PIPELINE_VAE = {
    **TINY_VAE, "z_dim": LATENT_CHANNELS,
    "latents_mean": [0.05 * (i - 8) for i in range(LATENT_CHANNELS)],
    "latents_std": [0.6 + 0.1 * i for i in range(LATENT_CHANNELS)],
}
VIDEO_SIZE = (32, 48)
# Frames (after the colour correction) are compared to this: the reference's colour transfer runs in
# float32 (scikit-image keeps float32 frames float32) and ours in float64; dividing by a tiny clip's
# small colour spread magnifies its rounding to ~1e-4 (a fortieth of an 8-bit level). Latents,
# the corrected frames' encodings included, agree to LATENT_TOLERANCE.
FRAME_TOLERANCE = 5e-4
LATENT_TOLERANCE = 1e-5
# a tiny clip: 13 frames (4 latent frames), 5 motion frames (2 latent frames)
CLIP, MOTION = 13, 5


class TinyImageFeatures(torch.nn.Module):
    """CLIP's place: [B, 3, H, W] -> [B, 257, 1280] tokens that depend on the frame's content."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.nn.Parameter(torch.randn(IMAGE_TOKENS, IMAGE_DIM, generator=generator))
        self.mix = torch.nn.Parameter(torch.randn(3 * 16, IMAGE_DIM, generator=generator) * 0.2)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(frames.float(), 4).flatten(1)
        return self.tokens[None] * (1 + pooled.mean(1))[:, None, None] + (pooled @ self.mix)[:, None]


class RecordingVAE:
    """A VAE recording the latents it decodes (each clip's denoised latents)."""

    def __init__(self, vae: WanVideoVAE):
        self.vae, self.decoded = vae, []

    def encode(self, pixels):
        return self.vae.encode(pixels)

    def decode(self, latents):
        self.decoded.append(latents.clone())
        return self.vae.decode(latents)


# --- without the reference ------------------------------------------------------------------------


def test_clips_advance_by_clip_minus_motion_frames_until_one_reaches_the_speechs_end():
    plan = plan_clips(200, clip_frames=81, motion_frames=9)
    # 0..80, 72..152, 144..224: the third is the first to reach frame 200
    assert plan.starts == (0, 72, 144)
    assert plan.frames == 200
    assert plan.padded_to == 144 + 81 + 3
    # the limit of the video, not the speech's end: no padding, cut at the limit
    limited = plan_clips(1200, clip_frames=81, motion_frames=9, max_frames=1000)
    assert limited.starts[-1] + 81 >= 1000 > limited.starts[-2] + 81
    assert (limited.frames, limited.padded_to) == (1000, None)
    # a clip or less of speech: one clip, padded like a last one
    assert plan_clips(40, clip_frames=81, motion_frames=9) == dataclasses.replace(
        plan, starts=(0,), frames=40, padded_to=84
    )
    with pytest.raises(ValueError, match="motion frames"):
        plan_clips(200, clip_frames=81, motion_frames=8)
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        plan_clips(200, clip_frames=80, motion_frames=9)


def test_the_speech_end_is_padded_with_itself_backwards():
    features = torch.arange(6.0)[:, None]
    assert pad_speech_end(features, 9)[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 5, 4, 3]
    assert pad_speech_end(features, None) is features


def test_the_mask_marks_only_the_first_latent_frame():
    mask = first_frame_mask(13, 2, 3)
    assert mask.shape == (1, 4, 4, 2, 3)
    assert mask[:, :, 0].eq(1).all() and mask[:, :, 1:].eq(0).all()


def _random_video(frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # a colour cast per frame, so that there is something to correct
    cast = torch.rand(3, frames, 1, 1, generator=generator) - 0.5
    return (torch.rand(3, frames, *VIDEO_SIZE, generator=generator) * 1.4 - 0.7 + cast).clamp(-1, 1)


def test_colour_conversions_invert_each_other_and_know_white_and_red():
    rgb = torch.rand(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, rtol=0, atol=1e-6)
    white_and_red = rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    # CIELAB of sRGB white (D65) and of pure red
    torch.testing.assert_close(white_and_red[0], torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), atol=1e-2,
                               rtol=0)
    torch.testing.assert_close(white_and_red[1], torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64), atol=5e-2,
                               rtol=0)


def test_colour_correction_moves_each_frame_to_the_references_colours():
    video, reference = _random_video(3, seed=1), _random_video(1, seed=2)[:, 0]
    corrected = match_colours(video, reference, 1.0)
    target = rgb_to_lab(((reference + 1) / 2).permute(1, 2, 0)).mean(dim=(0, 1))
    for frame in range(3):
        lab = rgb_to_lab(((corrected[:, frame] + 1) / 2).permute(1, 2, 0))
        # out-of-gamut colours are clipped, so the means agree closely, not exactly
        torch.testing.assert_close(lab.mean(dim=(0, 1)), target, rtol=0, atol=1.0)
    assert match_colours(video, reference, 0.0) is video
    half = match_colours(video, reference, 0.5)
    torch.testing.assert_close(half, (video + corrected) / 2, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        match_colours(video, reference, 1.5)


@pytest.fixture(scope="module")
def parts():
    torch.set_num_threads(1)
    reference_config = PIPELINE_TRANSFORMER
    ours = InfiniteTalkTransformer3DModel(**convert_transformer_config(reference_config)).eval()
    randomize_(ours, seed=3)
    vae = WanVideoVAE(well_conditioned_vae(PIPELINE_VAE))
    generator = torch.Generator().manual_seed(5)
    prompts = Prompts(
        torch.randn(1, 7, reference_config["text_dim"], generator=generator),
        torch.randn(1, 5, reference_config["text_dim"], generator=generator),
    )
    portrait = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    return ours, vae, TinyImageFeatures(), prompts, portrait


def _speech(frames: int, speakers: int = 1, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(frames, AUDIO_LAYERS, AUDIO_CHANNELS, generator=generator) for _ in range(speakers)]


def _pixels(image: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(cover_and_crop(image, VIDEO_SIZE).copy()).permute(2, 0, 1) / 255 - 0.5) * 2


def _ours(parts, speech, sampling: Sampling, seed: int, max_frames=None, frames_at=None, regions=None):
    transformer, vae, image_features, prompts, portrait = parts
    recording = RecordingVAE(vae)
    frame = _pixels(portrait)
    clips = list(
        generate_clips(
            transformer, recording, image_features, frames_at or (lambda start: frame), prompts, speech, sampling,
            seed, speaker_regions=regions, clip_frames=CLIP, motion_frames=MOTION, max_frames=max_frames,
        )
    )
    return clips, recording.decoded


def test_clips_come_one_by_one_and_add_up_to_the_speech(parts):
    fast_two_steps = dataclasses.replace(FAST, steps=1)
    clips, decoded = _ours(parts, _speech(18), fast_two_steps, seed=0)
    # clip 1: 13 frames; clip 2 starts at 8, its first 5 are the motion frames, 5 of its 8 new ones kept
    assert [clip.shape[1] for clip in clips] == [13, 5]
    assert all(clip.shape[0] == 3 and clip.shape[2:] == VIDEO_SIZE for clip in clips)
    assert len(decoded) == 2 and decoded[0].shape == (1, LATENT_CHANNELS, 4, 4, 6)
    # the seed draws the noise (the parity tests below show a seed gives the reference's video)
    other, _ = _ours(parts, _speech(18), fast_two_steps, seed=1)
    assert not torch.allclose(other[1], clips[1])


def test_a_clip_leaves_before_the_next_is_denoised_and_short_speech_makes_one_clip(parts):
    transformer, vae, image_features, prompts, portrait = parts
    frame, steps_seen = _pixels(portrait), []
    clips = generate_clips(
        transformer, vae, image_features, lambda start: frame, prompts, _speech(18), dataclasses.replace(FAST, steps=1),
        seed=0, clip_frames=CLIP, motion_frames=MOTION, on_step=lambda clip, step: steps_seen.append((clip, step)),
    )
    first = next(clips)
    assert first.shape[1] == CLIP and steps_seen == [(0, 0)]
    assert next(clips).shape[1] == 5 and steps_seen == [(0, 0), (1, 0)]
    assert next(clips, None) is None
    # 10 frames of speech, fewer than a clip (the reference refuses them): one clip, cut to 10
    short = generate_clips(
        transformer, vae, image_features, lambda start: frame, prompts, _speech(10), dataclasses.replace(FAST, steps=1),
        seed=0, clip_frames=CLIP, motion_frames=MOTION,
    )
    assert [clip.shape[1] for clip in short] == [10]


def test_unequal_speakers_are_refused(parts):
    with pytest.raises(ValueError, match="equally long"):
        _ours(parts, [*_speech(18), *_speech(17)], FAST, seed=0)


# --- parity with the reference ------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_parts(parts):
    requires_infinitetalk()
    reference = reference_transformer(PIPELINE_TRANSFORMER, seed=3)
    ours = parts[0]
    ours.load_state_dict(convert_transformer_state_dict(reference.state_dict()), strict=True)
    return reference


def _reference(reference_parts, parts, tmp_path, speech, arguments, video_frames=None):
    _, vae, image_features, prompts, portrait = parts
    condition = tmp_path / "portrait.png"
    Image.fromarray(portrait).save(condition)
    paths = []
    for index, features in enumerate(speech):
        paths.append(tmp_path / f"speech_{index}.pt")
        torch.save(features, paths[-1])
    recording = RecordingVAE(vae)
    video = reference_generate(
        reference_parts, recording, image_features, (prompts.text[0], prompts.negative[0]), condition, paths,
        VIDEO_SIZE, arguments, video_frames,
    )
    return video, recording.decoded


def _tiny_clip_arguments(arguments, mode: str):
    arguments.frame_num, arguments.motion_frame, arguments.mode, arguments.base_seed = CLIP, MOTION, mode, 11
    return arguments


def _sampling(arguments, steps: int) -> Sampling:
    return Sampling(steps, arguments.sample_shift, arguments.sample_text_guide_scale,
                    arguments.sample_audio_guide_scale)


@requires_infinitetalk
def test_one_clip_matches_the_reference_in_quality_mode(reference_parts, parts, tmp_path):
    arguments = _tiny_clip_arguments(reference_run_arguments(), "clip")
    sampling = _sampling(arguments, arguments.sample_steps)
    assert sampling == QUALITY
    assert arguments.color_correction_strength == COLOUR_CORRECTION_STRENGTH
    speech = _speech(16)
    expected, expected_latents = _reference(reference_parts, parts, tmp_path, speech, arguments)
    clips, latents = _ours(parts, speech, sampling, seed=11, max_frames=CLIP)
    assert len(latents) == len(expected_latents) == 1
    torch.testing.assert_close(latents[0], expected_latents[0], rtol=0, atol=LATENT_TOLERANCE)
    torch.testing.assert_close(torch.cat(clips, dim=1), expected, rtol=0, atol=FRAME_TOLERANCE)


@requires_infinitetalk
def test_chained_clips_match_the_reference_in_fast_mode(reference_parts, parts, tmp_path):
    fast, steps = reference_fast_arguments()
    # the README's LoRA command samples 8 steps (its FusionX LoRA); lightx2v's are the 4 it names
    fast.sample_steps = steps
    arguments = _tiny_clip_arguments(fast, "streaming")
    sampling = _sampling(arguments, steps)
    assert sampling == FAST
    # 26 frames: clips at 0, 8 and 16; the third (frames 16..28) passes the end and is the last;
    # the third also shows that the noise is drawn in the reference's order
    speech = _speech(26, seed=2)
    expected, expected_latents = _reference(reference_parts, parts, tmp_path, speech, arguments)
    clips, latents = _ours(parts, speech, sampling, seed=11, max_frames=arguments.max_frame_num)
    assert len(latents) == len(expected_latents) == 3
    for ours, theirs in zip(latents, expected_latents, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=LATENT_TOLERANCE)
    video = torch.cat(clips, dim=1)
    assert [clip.shape[1] for clip in clips] == [13, 8, 5]
    assert video.shape[1] == expected.shape[1] == 26
    torch.testing.assert_close(video, expected, rtol=0, atol=FRAME_TOLERANCE)


@requires_infinitetalk
def test_two_chained_clips_match_the_reference_in_video_mode(reference_parts, parts, tmp_path):
    fast, steps = reference_fast_arguments()
    fast.sample_steps = steps
    arguments = _tiny_clip_arguments(fast, "streaming")
    rng = np.random.default_rng(7)
    # each clip is conditioned on the source's frame where it starts: frames 0 and 8 here
    source = [(rng.random((40, 56, 3)) * 255).astype(np.uint8) for _ in range(10)]
    speech = _speech(18, seed=4)
    expected, expected_latents = _reference(
        reference_parts, parts, tmp_path, speech, arguments, [Image.fromarray(frame) for frame in source]
    )
    pixels = [_pixels(frame) for frame in source]
    clips, latents = _ours(
        parts, speech, _sampling(arguments, steps), seed=11, max_frames=arguments.max_frame_num,
        frames_at=lambda start: pixels[min(start, len(pixels) - 1)],
    )
    for ours, theirs in zip(latents, expected_latents, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=LATENT_TOLERANCE)
    torch.testing.assert_close(torch.cat(clips, dim=1), expected, rtol=0, atol=FRAME_TOLERANCE)
    # conditioned on the portrait every time instead, the second clip differs
    _, image_mode = _ours(parts, speech, _sampling(arguments, steps), seed=11, frames_at=lambda start: pixels[0])
    assert (image_mode[1] - latents[1]).abs().max() > 100 * LATENT_TOLERANCE


@requires_infinitetalk
@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_colour_correction_matches_the_reference(strength: float):
    video, reference = _random_video(3, seed=3), _random_video(1, seed=4)[:, 0]
    expected = reference_match_colours(video, reference, strength)
    torch.testing.assert_close(match_colours(video, reference, strength), expected.float(), rtol=0, atol=1e-4)


@requires_infinitetalk
def test_two_speakers_match_the_reference(reference_parts, parts, tmp_path):
    fast, steps = reference_fast_arguments()
    fast.sample_steps = steps
    arguments = _tiny_clip_arguments(fast, "streaming")
    speech = _speech(18, speakers=2, seed=6)
    expected, expected_latents = _reference(reference_parts, parts, tmp_path, speech, arguments)
    portrait = parts[4]
    latent_size = (VIDEO_SIZE[0] // 8, VIDEO_SIZE[1] // 8)
    regions = speaker_regions(portrait.shape[:2], VIDEO_SIZE, latent_size)
    clips, latents = _ours(parts, speech, _sampling(arguments, steps), seed=11, regions=regions)
    for ours, theirs in zip(latents, expected_latents, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=LATENT_TOLERANCE)
    torch.testing.assert_close(torch.cat(clips, dim=1), expected, rtol=0, atol=FRAME_TOLERANCE)
    # the speakers' speech is not interchangeable
    _, swapped = _ours(parts, speech[::-1], _sampling(arguments, steps), seed=11, regions=regions)
    assert (swapped[0] - latents[0]).abs().max() > 100 * LATENT_TOLERANCE
