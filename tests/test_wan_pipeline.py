"""The Wan2.2-S2V generation loop on tiny random-weight models: length, chaining, seeds, progress."""

from __future__ import annotations

import collections
import functools
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, Wav2Vec2Config

from model.base import SPEECH_SAMPLE_RATE, num_frames_for
from model.wan_common.frames import fit_portrait
from model.wan_common.text import TextEncoder
from model.wan_common.vae import WanVideoVAE
from model.wan_s2v.config import FPS, FRAMES_PER_CLIP
from model.wan_s2v.pipeline import (
    FIRST_CLIP_DROPPED_FRAMES,
    LATENT_CLIP_FRAMES,
    LATENT_MOTION_FRAMES,
    SamplingSettings,
    WanS2VPipeline,
    clips_for,
)
from model.wan_s2v.speech import SpeechEncoder
from model.wan_s2v.transformer import WanS2VTransformer3DModel
from tests.wan_tiny_models import (
    TINY_T5,
    TINY_TEXT_LEN,
    speech_samples,
    tiny_umt5,
    tiny_vae,
    write_tiny_tokenizer,
    write_tiny_wav2vec2,
)

# The VAE dominates the time on a CPU: a narrower one than the converters' tests use.
# 16 latent channels like the real one: the official loop hard-codes them.
FAST_VAE = dict(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                latents_mean=[0.1 * (i % 5) - 0.2 for i in range(16)], latents_std=[0.5 + 0.1 * i for i in range(16)])
# The generation loops' tests' VAE: no residual block in the encoder's levels and one in the
# decoder's (num_res_blocks + 1), half FAST_VAE's CPU time; causal in time all the same. FAST_VAE
# stays what the parity suites compare with the references.
LEAN_VAE = dict(FAST_VAE, num_res_blocks=0)
# Small enough that a clip takes well under a second on a CPU core.
TINY_TRANSFORMER = dict(
    in_channels=FAST_VAE["z_dim"], out_channels=FAST_VAE["z_dim"], pose_channels=FAST_VAE["z_dim"],
    num_attention_heads=2, attention_head_dim=12, ffn_dim=32, num_layers=2, freq_dim=16,
    text_dim=TINY_T5["d_model"], text_len=TINY_TEXT_LEN, audio_dim=32, num_audio_layers=3,
    num_audio_tokens=2, audio_inject_layers=(0, 1),
)
FAST = SamplingSettings(num_steps=2, negative_prompt="blurry")
HEIGHT = WIDTH = 64


def tiny_transformer(seed: int = 0) -> WanS2VTransformer3DModel:
    torch.manual_seed(seed)
    model = WanS2VTransformer3DModel(**TINY_TRANSFORMER).eval()
    with torch.no_grad():  # some official layers start at zero; make every weight matter
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model


def tiny_pipeline(folder: Path, transformer: WanS2VTransformer3DModel | None = None) -> WanS2VPipeline:
    """The generation loop on CPU in float32 over tiny random models (tokenizer and wav2vec2 in `folder`)."""
    components = types.SimpleNamespace(
        transformer=transformer or tiny_transformer(),
        vae=WanVideoVAE(tiny_vae(config=LEAN_VAE)),
        text_encoder=TextEncoder(tiny_umt5(), AutoTokenizer.from_pretrained(write_tiny_tokenizer(folder / "tok")),
                                 text_len=TINY_TEXT_LEN),
        speech_encoder=SpeechEncoder.from_pretrained(write_tiny_wav2vec2(folder / "w2v")),
    )
    return WanS2VPipeline(components, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> WanS2VPipeline:
    return tiny_pipeline(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def portrait(pipeline):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(90, 80, 3), dtype=np.uint8)
    return pipeline.encode_portrait(image, HEIGHT, WIDTH)


class Recorder:
    """Wraps the transformer and the VAE to see what each clip was given and what it decoded."""

    def __init__(self, pipeline: WanS2VPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict] = []
        self.decoded: list[torch.Tensor] = []
        self.encoded_shapes: list[tuple[int, ...]] = []
        transformer, vae = pipeline.transformer, pipeline.vae
        original_forward, original_decode, original_encode = transformer.forward, vae.decode, vae.encode

        def forward(hidden_states, **kwargs):
            self.calls.append(dict(kwargs, hidden_states=hidden_states))
            return original_forward(hidden_states, **kwargs)

        def decode(latents):
            pixels = original_decode(latents)
            self.decoded.append(pixels)
            return pixels

        def encode(pixels):
            self.encoded_shapes.append(tuple(pixels.shape))
            return original_encode(pixels)

        monkeypatch.setattr(transformer, "forward", forward)
        monkeypatch.setattr(vae, "decode", decode)
        monkeypatch.setattr(vae, "encode", encode)


def run(pipeline, portrait, seconds: float, seed: int = 7, settings: SamplingSettings = FAST, progress=None):
    samples = speech_samples(seconds, seed=3)
    frames = list(pipeline.generate(portrait, samples, seed, "a person speaking", settings,
                                    progress or (lambda fraction, detail: None)))
    return frames


SECONDS = 6.3  # 101 frames: the first clip gives 77, the second the remaining 24


@pytest.fixture(scope="module")
def two_clips(pipeline, portrait):
    """One recorded generation of speech longer than a clip: (recorder, frame batches, progress)."""
    reports = []
    with pytest.MonkeyPatch.context() as patch:
        recorder = Recorder(pipeline, patch)
        batches = run(pipeline, portrait, SECONDS, progress=lambda *report: reports.append(report))
    return recorder, batches, reports


def test_speech_longer_than_a_clip_gives_exactly_its_length_at_16_fps(two_clips):
    _, batches, _ = two_clips
    assert [len(batch) for batch in batches] == [80 - FIRST_CLIP_DROPPED_FRAMES, 101 - 77]
    assert all(batch.shape[1:] == (HEIGHT, WIDTH, 3) and batch.dtype == np.uint8 for batch in batches)
    assert np.concatenate(batches).std() > 1.0  # real pictures, not a constant


def test_the_second_clip_receives_the_first_clips_float_frames_as_motion(pipeline, two_clips):
    recorder, _, _ = two_clips
    first, second = recorder.calls[0], recorder.calls[FAST.num_steps]
    assert first["drop_motion_frames"] is True and second["drop_motion_frames"] is False
    assert first["hidden_states"].shape[2] == LATENT_CLIP_FRAMES
    assert first["motion_latents"].shape[2] == LATENT_MOTION_FRAMES
    # The first clip decodes behind the portrait's latent; its last 73 frames, in float32 and
    # never rounded to 8 bits, are what the second clip's motion latents encode.
    first_clip = recorder.decoded[0][:, :, -80:][:, :, FIRST_CLIP_DROPPED_FRAMES:]
    expected = pipeline.vae.encode(first_clip[:, :, -73:])
    torch.testing.assert_close(second["motion_latents"][:1], expected, rtol=0, atol=0)
    assert not torch.equal(second["motion_latents"], first["motion_latents"])


def test_the_unconditional_pass_has_the_negative_prompt_and_no_speech(pipeline, two_clips):
    recorder, _, _ = two_clips
    call = recorder.calls[0]
    assert call["hidden_states"].shape[0] == 2
    assert torch.equal(call["encoder_hidden_states"][0], pipeline.encode_prompt("a person speaking")[0])
    assert torch.equal(call["encoder_hidden_states"][1], pipeline.encode_prompt("blurry")[0])
    assert call["audio_features"][0].abs().sum() > 0 and call["audio_features"][1].abs().sum() == 0


def test_the_portrait_is_not_encoded_again_during_generation(two_clips):
    recorder, _, _ = two_clips
    # only motion contexts (73 frames: the black start, cached per size, and the one between clips)
    assert recorder.encoded_shapes and all(shape == (1, 3, 73, HEIGHT, WIDTH) for shape in recorder.encoded_shapes)


def test_progress_counts_steps_and_decodes_with_time_left(two_clips):
    _, _, reports = two_clips
    assert len(reports) == 2 * (FAST.num_steps + 1)
    fractions = [fraction for fraction, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert reports[0][1].startswith("clip 1/2, step 1/2, about ") and reports[0][1].endswith(" left")
    assert reports[-1][1].startswith("clip 2/2 decoded")


def test_no_guidance_runs_one_pass_per_step(pipeline, portrait, monkeypatch):
    recorder = Recorder(pipeline, monkeypatch)
    run(pipeline, portrait, 1.0, settings=SamplingSettings(num_steps=2, guidance_scale=1.0))
    assert len(recorder.calls) == 2 and recorder.calls[0]["hidden_states"].shape[0] == 1


def test_same_seed_same_video_other_seed_other_video(pipeline, portrait):
    first = np.concatenate(run(pipeline, portrait, 1.5, seed=11))
    again = np.concatenate(run(pipeline, portrait, 1.5, seed=11))
    other = np.concatenate(run(pipeline, portrait, 1.5, seed=12))
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1.0


def test_prompts_are_encoded_once(pipeline, monkeypatch):
    calls = []
    original = pipeline.text_encoder.encode
    monkeypatch.setattr(pipeline.text_encoder, "encode", lambda prompts: calls.append(prompts) or original(prompts))
    pipeline.encode_prompt("a new prompt")
    pipeline.encode_prompt("a new prompt")
    assert calls == [["a new prompt"]]


@pytest.mark.parametrize("num_frames, reference_clips, expected", [
    (77, 1, 1), (78, 1, 1), (80, 1, 1), (157, 2, 2), (158, 2, 2), (160, 2, 2), (20, 1, 1), (160, 3, 3),
])
def test_clips_cover_the_speech(num_frames, reference_clips, expected):
    assert clips_for(num_frames, reference_clips) == expected


@pytest.mark.parametrize("num_frames, reference_clips", [(81, 1), (161, 2)])
def test_a_shortfall_beyond_the_first_clips_dropped_frames_is_refused(num_frames, reference_clips):
    with pytest.raises(ValueError, match="4 short of"):
        clips_for(num_frames, reference_clips)


def test_the_held_frames_never_exceed_the_first_clips_dropped_frames(pipeline):
    """Every speech length from one frame to six clips, sample by sample: the reference's clips,
    less the first clip's dropped frames, fall short of the video by at most those 3 frames."""
    encoder = pipeline.speech_encoder
    # the feature encoder of every wav2vec2, the published xlsr-53 included, which num_clips reads
    assert tuple(encoder.model.config.conv_kernel) == tuple(Wav2Vec2Config().conv_kernel)
    assert tuple(encoder.model.config.conv_stride) == tuple(Wav2Vec2Config().conv_stride)
    # the same count on the same layers, read from plain tuples: a transformers config's attribute
    # lookups were two thirds of this loop's 300 000 counts
    layers = types.SimpleNamespace(conv_kernel=tuple(encoder.model.config.conv_kernel),
                                   conv_stride=tuple(encoder.model.config.conv_stride))
    num_clips = functools.partial(SpeechEncoder.num_clips, types.SimpleNamespace(model=types.SimpleNamespace(
        config=layers)))
    samples_per_frame = SPEECH_SAMPLE_RATE // FPS
    holds = collections.Counter()
    for num_samples in range(samples_per_frame, 6 * FRAMES_PER_CLIP * samples_per_frame + samples_per_frame):
        num_frames = num_frames_for(num_samples / SPEECH_SAMPLE_RATE, FPS)
        reference_clips = num_clips(num_samples)
        assert reference_clips * FRAMES_PER_CLIP - FIRST_CLIP_DROPPED_FRAMES >= num_frames - FIRST_CLIP_DROPPED_FRAMES
        holds[max(0, num_frames - (reference_clips * FRAMES_PER_CLIP - FIRST_CLIP_DROPPED_FRAMES))] += 1
    assert sorted(holds) == [0, 1, 2, 3]  # every hold up to the bound happens, none beyond


def test_speech_just_short_of_a_clip_boundary_holds_the_last_frame_instead_of_a_new_clip(
    pipeline, portrait, monkeypatch
):
    seconds = 5.0  # 80 frames; the reference's 1 clip gives 77, the extra clip it used to get is gone
    num_samples = len(speech_samples(seconds))
    assert pipeline.speech_encoder.num_clips(num_samples) == 1
    assert num_frames_for(seconds, FPS) == FRAMES_PER_CLIP
    recorder = Recorder(pipeline, monkeypatch)
    batches = run(pipeline, portrait, seconds)
    assert len(recorder.calls) == FAST.num_steps and len(recorder.decoded) == 1
    frames = np.concatenate(batches)
    assert len(frames) == FRAMES_PER_CLIP
    last_generated = frames[-1 - FIRST_CLIP_DROPPED_FRAMES]
    assert all(np.array_equal(frame, last_generated) for frame in frames[-FIRST_CLIP_DROPPED_FRAMES:])
    assert not np.array_equal(frames[-2 - FIRST_CLIP_DROPPED_FRAMES], last_generated)  # a moving video before


def test_fit_portrait_matches_resize_then_centre_crop():
    image = np.arange(200 * 100 * 3, dtype=np.uint8).reshape(200, 100, 3)
    tall = fit_portrait(image, 128, 64)
    assert tall.shape == (128, 64, 3)
    wide = fit_portrait(image, 64, 128)  # shorter side to 64 gives 64x128: crop needs padding
    assert wide.shape == (64, 128, 3)
    assert (wide[:, :32] == 0).all() and (wide[:, -32:] == 0).all() and wide[:, 32:96].any()


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: the text encoder visits it from host memory"
)
def test_text_encoder_visits_the_gpu_for_a_new_prompt_and_goes_home(pipeline):
    """The fp8 mode keeps umt5 in host memory and brings it to the GPU only to encode."""
    gpu = torch.device("cuda")
    components = types.SimpleNamespace(transformer=pipeline.transformer, vae=pipeline.vae,
                                       text_encoder=pipeline.text_encoder, speech_encoder=pipeline.speech_encoder)
    visiting = WanS2VPipeline(components, gpu, torch.float32, text_device=gpu)
    seen = []
    original = pipeline.text_encoder.encode

    def recording_encode(prompts):
        seen.append(pipeline.text_encoder.model.device)
        return original(prompts)

    pipeline.text_encoder.encode = recording_encode
    try:
        on_cpu = pipeline.encode_prompt("a prompt for the visit")
        on_gpu = visiting.encode_prompt("a prompt for the visit")
    finally:
        del pipeline.text_encoder.encode
    assert [device.type for device in seen] == ["cpu", "cuda"]
    assert pipeline.text_encoder.model.device.type == "cpu", "back home after encoding"
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)


def test_a_portrait_already_fitted_encodes_as_the_photo_it_came_from(pipeline):
    image = np.random.default_rng(4).integers(0, 256, size=(300, 200, 3), dtype=np.uint8)
    fitted = fit_portrait(image, HEIGHT, WIDTH)
    assert np.array_equal(fit_portrait(fitted, HEIGHT, WIDTH), fitted)
    assert torch.equal(pipeline.encode_portrait(fitted, HEIGHT, WIDTH).latent,
                       pipeline.encode_portrait(image, HEIGHT, WIDTH).latent)
