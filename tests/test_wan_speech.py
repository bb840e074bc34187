"""Speech features: tiny random wav2vec2 through our encoder, and parity with the reference's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.wan_s2v.speech import SpeechEncoder, bucket_clip_features
from tests.wan_tiny_models import reference_module, speech_samples, write_tiny_wav2vec2


@pytest.fixture(scope="module")
def wav2vec_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wav2vec2(tmp_path_factory.mktemp("wav2vec2"))


@pytest.fixture(scope="module")
def encoder(wav2vec_folder: Path) -> SpeechEncoder:
    return SpeechEncoder.from_pretrained(wav2vec_folder, "cpu", torch.float32)


def test_bucket_clip_features_slices_clips_and_zero_pads_past_the_speech() -> None:
    features = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10) + 1
    first = bucket_clip_features(features, clip_index=0, frames_per_clip=4)
    last = bucket_clip_features(features, clip_index=2, frames_per_clip=4)
    assert first.shape == last.shape == (1, 2, 3, 4)
    assert torch.equal(first[0], features[:, :, 0:4])
    assert torch.equal(last[0, :, :, :2], features[:, :, 8:10])
    assert torch.count_nonzero(last[0, :, :, 2:]) == 0


def test_encode_gives_every_layer_one_column_per_video_frame(encoder: SpeechEncoder) -> None:
    samples = speech_samples(3.0)
    features = encoder.encode(samples, fps=16)
    assert features.dtype == torch.float32
    assert features.shape[:2] == (3, 32)  # embeddings + 2 layers, hidden size 32
    # 3 s at 16 fps: 48 frames, give or take the resampling's rounding at the end
    assert 46 <= features.shape[2] <= 48
    # at the fast mode's 25 fps: 75 frames, each 0.04 s of speech
    assert 73 <= encoder.encode(samples, fps=25).shape[2] <= 75
    assert encoder.num_clips(len(samples), frames_per_clip=80) == 1
    assert encoder.num_clips(16000 * 6, frames_per_clip=80) == 2
    # the first frame is the first wav2vec2 frame (align_corners resampling): compare directly
    inputs = encoder.feature_extractor(samples, sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        hidden = encoder.model(inputs, output_hidden_states=True).hidden_states
    assert torch.allclose(features[:, :, 0], torch.cat(hidden)[:, 0, :], atol=1e-6)
    assert features.abs().amax(dim=(1, 2)).min() > 0  # no layer is silently dropped


# the quality mode's 80-frame clips at 16 fps, and the fast mode's 48-frame clips at Live Avatar's
# 25 (whose audio_encoder.py is this file; tests/test_fast_mode_reference.py runs Live Avatar's own)
@pytest.mark.parametrize(("fps", "frames"), [(16, 80), (25, 48)])
@pytest.mark.parametrize("seconds", [2.3, 5.0, 7.31])
def test_clip_features_match_the_reference(
    monkeypatch: pytest.MonkeyPatch, wav2vec_folder: Path, encoder: SpeechEncoder, seconds: float, fps: int,
    frames: int,
) -> None:
    audio_encoder = reference_module(monkeypatch, "modules.s2v.audio_encoder")
    samples = speech_samples(seconds, seed=1)
    monkeypatch.setattr(audio_encoder.librosa, "load", lambda path, sr: (samples, sr), raising=False)
    reference = audio_encoder.AudioEncoder(model_id=str(wav2vec_folder))
    with torch.no_grad():
        z = reference.extract_audio_feat("speech.wav", return_all_layers=True)
    bucket, num_clips = reference.get_audio_embed_bucket_fps(z, fps=fps, batch_frames=frames, m=0)
    # as WanS2V.encode_audio hands it to the model: [1, layers, hidden, frames]
    bucket = bucket.unsqueeze(0).permute(0, 2, 3, 1)

    features = encoder.encode(samples, fps=fps)
    assert encoder.num_clips(len(samples), frames_per_clip=frames, fps=fps) == num_clips
    scale = bucket.abs().max()
    for clip in range(num_clips):
        expected = bucket[..., clip * frames : (clip + 1) * frames]
        ours = bucket_clip_features(features, clip, frames_per_clip=frames)
        assert ours.shape == expected.shape
        assert (ours - expected).abs().max() <= 1e-4 * scale
