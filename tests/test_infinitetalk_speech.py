"""InfiniteTalk's speech features: a tiny random chinese-wav2vec2-shaped model through our encoder,
and parity with the reference's own `get_embedding` (INFINITETALK_REFERENCE_REPO)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.infinitetalk.config import AUDIO_WINDOW, FPS
from model.infinitetalk.speech import SpeechEncoder, frame_windows
from tests.infinitetalk_reference import reference_speech_features, requires_infinitetalk
from tests.infinitetalk_tiny_models import write_tiny_chinese_wav2vec2
from tests.wan_tiny_models import speech_samples

LAYERS, HIDDEN = 3, 32


@pytest.fixture(scope="module")
def wav2vec_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_chinese_wav2vec2(tmp_path_factory.mktemp("wav2vec2"), hidden_size=HIDDEN, layers=LAYERS)


@pytest.fixture(scope="module")
def encoder(wav2vec_folder: Path) -> SpeechEncoder:
    torch.set_num_threads(1)
    return SpeechEncoder.from_pretrained(wav2vec_folder)


def test_encode_gives_every_transformer_layer_one_row_per_video_frame(encoder: SpeechEncoder) -> None:
    samples = speech_samples(2.3)
    features = encoder.encode(samples)
    assert features.dtype == torch.float32
    assert features.shape == (int(2.3 * FPS), LAYERS, HIDDEN) == (57, encoder.num_layers, HIDDEN)
    # the last row is the encoder's final output at the video's rate
    inputs = encoder.feature_extractor(samples, sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        conv = encoder.model.feature_extractor(inputs)
        conv = torch.nn.functional.interpolate(conv, size=57, mode="linear", align_corners=True).transpose(1, 2)
        last = encoder.model.encoder(encoder.model.feature_projection(conv)[0]).last_hidden_state[0]
    assert torch.allclose(features[:, -1], last, atol=1e-6)
    # every layer is there, and they differ (no layer is silently repeated or dropped)
    assert features.abs().amax(dim=(0, 2)).min() > 0
    assert not torch.allclose(features[:, 0], features[:, 1])


def test_speech_shorter_than_one_frame_is_refused(encoder: SpeechEncoder) -> None:
    with pytest.raises(ValueError, match="shorter than one video frame"):
        encoder.encode(np.zeros(100, dtype=np.float32))


def test_frame_windows_centre_each_frame_and_clamp_at_the_ends() -> None:
    features = torch.arange(6, dtype=torch.float32)[:, None, None].expand(6, 2, 3).clone()
    windows = frame_windows(features, 0, 6)
    assert windows.shape == (6, AUDIO_WINDOW, 2, 3)
    half = AUDIO_WINDOW // 2
    for frame in range(6):
        expected = [min(max(frame + offset, 0), 5) for offset in range(-half, half + 1)]
        assert windows[frame, :, 0, 0].tolist() == expected
    # a clip in the middle of the speech takes its own rows
    assert frame_windows(features, 2, 4)[:, half, 0, 0].tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="odd window"):
        frame_windows(features, 3, 3)


@requires_infinitetalk
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("seconds", [3.5, 4.13])
def test_features_match_the_reference(wav2vec_folder: Path, encoder: SpeechEncoder, seconds: float) -> None:
    samples = speech_samples(seconds, seed=int(seconds * 100))
    expected = reference_speech_features(wav2vec_folder, samples)
    ours = encoder.encode(samples)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected.float(), rtol=0, atol=1e-5)
