"""OmniAvatar's speech features against the reference's (`scripts/inference.py` + `wav2vec.py`),
on a tiny random wav2vec2 laid out like wav2vec2-base-960h."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.omniavatar import config, layout
from model.omniavatar.speech import SpeechEncoder, speech_frames, with_leading_silence
from tests.omniavatar_reference import (
    reference_fixed_frames,
    reference_speech_features,
    reference_yaml,
    requires_omniavatar,
)
from tests.omniavatar_tiny_models import write_tiny_wav2vec2_960h


@pytest.fixture(scope="module")
def wav2vec_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_wav2vec2_960h(tmp_path_factory.mktemp("wav2vec2-base-960h"))


@pytest.fixture(scope="module")
def encoder(wav2vec_folder: Path) -> SpeechEncoder:
    return SpeechEncoder.from_pretrained(wav2vec_folder)


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    time = np.arange(int(seconds * config.SAMPLE_RATE)) / config.SAMPLE_RATE
    voiced = 0.3 * np.sin(2 * np.pi * 180 * time) * (1 + np.sin(2 * np.pi * 3 * time))
    return (voiced + 0.05 * generator.standard_normal(time.shape)).astype(np.float32)


@requires_omniavatar
@pytest.mark.parametrize("seconds", [0.37, 1.3])
def test_features_are_the_reference_ones(wav2vec_folder: Path, encoder: SpeechEncoder, seconds: float) -> None:
    torch.set_num_threads(1)
    settings = reference_yaml()
    # small chunks (21 frames) so that the 1.6 s clip needs four of them, as a long recording would
    chunk = layout.chunk_frames(720, 720, max_tokens=10800)
    fixed, first = reference_fixed_frames(settings["overlap_frame"], random_prefix_frames=True)
    audio = with_leading_silence(_speech(seconds), settings["silence_duration_s"])
    expected, covered = reference_speech_features(wav2vec_folder, audio, chunk, fixed, first, settings)

    assert speech_frames(len(audio)) == covered
    frames = layout.padded_speech_frames(covered, chunk, settings["overlap_frame"])
    ours = encoder.encode(audio, frames)
    assert ours.shape == expected.shape == (frames, encoder.feature_dim)
    torch.testing.assert_close(ours, expected.float(), rtol=1e-5, atol=1e-5)


def test_silence_comes_first_and_lasts_the_configured_time() -> None:
    speech = _speech(0.1)
    padded = with_leading_silence(speech)
    silence = int(config.LEADING_SILENCE_SECONDS * config.SAMPLE_RATE)
    assert len(padded) == silence + len(speech)
    assert not padded[:silence].any()
    np.testing.assert_array_equal(padded[silence:], speech)


def test_rows_hold_the_output_then_every_hidden_state(encoder: SpeechEncoder) -> None:
    width = encoder.model.config.hidden_size
    features = encoder.encode(_speech(0.5), 20)
    assert features.shape == (20, width * (encoder.model.config.num_hidden_layers + 2))
    # the output appears first and again last; the layers' inputs differ from it
    torch.testing.assert_close(features[:, :width], features[:, -width:])
    assert not torch.allclose(features[:, width : 2 * width], features[:, :width])


def test_padding_is_silence_after_normalisation(encoder: SpeechEncoder) -> None:
    speech = _speech(0.4)
    short, long = encoder.encode(speech, 10), encoder.encode(speech, 30)
    assert short.shape[0] == 10 and long.shape[0] == 30
    # the padded run resamples over more time: its rows differ, but both are finite
    assert torch.isfinite(long).all() and not torch.allclose(short, long[:10])


def test_bad_lengths_are_refused(encoder: SpeechEncoder) -> None:
    with pytest.raises(ValueError, match="empty"):
        encoder.encode(np.zeros(0, dtype=np.float32), 5)
    with pytest.raises(ValueError, match="cannot hold"):
        encoder.encode(_speech(1.0), 5)
