"""Speech features for OmniAvatar: wav2vec2-base-960h's hidden states, one row per video frame.

As the reference computes them (`scripts/inference.py` with `OmniAvatar/models/wav2vec.py`):
LEADING_SILENCE_SECONDS of silence go before the speech; the feature extractor normalises the
whole recording; it is then zero-padded to the frames the chunks need
(`layout.padded_speech_frames`, SAMPLE_RATE / FPS samples a frame), and the convolutional features
(50 a second) are linearly resampled (align_corners) to one row per video frame *before* the
transformer layers run. A row is the encoder's output followed by every hidden state
transformers reports (the input of each layer, then the output of the last), side by side:
[frames, 768 * 14] for the base model.

The wav2vec2 run itself is model/wan_common/wav2vec2_frames.py's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from model.wan_common.wav2vec2_frames import FrameRateSpeechEncoder

from .config import FPS, LEADING_SILENCE_SECONDS, SAMPLE_RATE


def with_leading_silence(samples_16k: np.ndarray, seconds: float = LEADING_SILENCE_SECONDS) -> np.ndarray:
    """`samples_16k` (float32 mono) after `seconds` of silence."""
    silence = np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)
    return np.concatenate([silence, np.asarray(samples_16k, dtype=np.float32)])


def speech_frames(num_samples: int, fps: int = FPS) -> int:
    """Video frames the speech covers: the reference's ceil(seconds * fps)."""
    return math.ceil(num_samples / SAMPLE_RATE * fps)


class SpeechEncoder(FrameRateSpeechEncoder):
    """wav2vec2 (such as `wav2vec2-base-960h/`) run as OmniAvatar runs it."""

    def __init__(self, model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor) -> None:
        if model.config.do_stable_layer_norm:
            # its hidden states would be others (the last normalised, the layers' inputs not)
            raise ValueError("OmniAvatar's speech model is wav2vec2-base-960h-like: do_stable_layer_norm=False")
        super().__init__(model, feature_extractor)

    @property
    def feature_dim(self) -> int:
        """Channels of a row: the output and the hidden states (layers + 1) of `hidden_size` each."""
        return self.model.config.hidden_size * (self.model.config.num_hidden_layers + 2)

    @torch.no_grad()
    def encode(self, samples_16k: np.ndarray, frames: int, fps: int = FPS) -> torch.Tensor:
        """Features of mono 16 kHz speech (silence already added) padded to `frames` video frames:
        float32 [frames, feature_dim], row i for video frame i."""
        covered = speech_frames(len(samples_16k), fps)
        if covered < 1:
            raise ValueError("the speech is empty: OmniAvatar needs at least one video frame of it")
        if frames < covered:
            raise ValueError(f"{frames} frames cannot hold speech of {covered} frames at {fps} fps")
        inputs = self.normalised(samples_16k)
        # the padding comes after the normalisation: true silence, whatever the speech's level
        inputs = F.pad(inputs, (0, frames * (SAMPLE_RATE // fps) - inputs.shape[1]))
        last, layer_inputs = self.run_layers(self.frame_states(inputs, frames), keep="inputs")
        return torch.cat([last, *layer_inputs, last], dim=-1)[0].float()
