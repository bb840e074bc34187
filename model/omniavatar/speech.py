"""Speech features for OmniAvatar: wav2vec2-base-960h's hidden states, one row per video frame.

As the reference computes them (`scripts/inference.py` with `OmniAvatar/models/wav2vec.py`):
LEADING_SILENCE_SECONDS of silence go before the speech; the feature extractor normalises the
whole recording; it is then zero-padded to the frames the chunks need
(`layout.padded_speech_frames`, SAMPLE_RATE / FPS samples a frame), and the convolutional features
(50 a second) are linearly resampled (align_corners) to one row per video frame *before* the
transformer layers run. A row is the encoder's output followed by every hidden state
transformers reports (the input of each layer, then the output of the last), side by side:
[frames, 768 * 14] for the base model.

The feature extractor's settings (normalisation) are read from the wav2vec2 folder, as the
reference's `Wav2Vec2FeatureExtractor.from_pretrained` reads them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from .config import FPS, LEADING_SILENCE_SECONDS, SAMPLE_RATE


def with_leading_silence(samples_16k: np.ndarray, seconds: float = LEADING_SILENCE_SECONDS) -> np.ndarray:
    """`samples_16k` (float32 mono) after `seconds` of silence."""
    silence = np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)
    return np.concatenate([silence, np.asarray(samples_16k, dtype=np.float32)])


def speech_frames(num_samples: int, fps: int = FPS) -> int:
    """Video frames the speech covers: the reference's ceil(seconds * fps)."""
    return math.ceil(num_samples / SAMPLE_RATE * fps)


class SpeechEncoder:
    """wav2vec2 (a CTC head in the folder is not needed) run as OmniAvatar runs it."""

    def __init__(self, model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor) -> None:
        if model.config.do_stable_layer_norm:
            # its hidden states would be others (the last normalised, the layers' inputs not)
            raise ValueError("OmniAvatar's speech model is wav2vec2-base-960h-like: do_stable_layer_norm=False")
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> SpeechEncoder:
        """Load a transformers wav2vec2 folder such as `wav2vec2-base-960h/`."""
        model = Wav2Vec2Model.from_pretrained(folder, dtype=dtype).to(device)
        return cls(model, Wav2Vec2FeatureExtractor.from_pretrained(folder))

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
        inputs = self.feature_extractor(
            np.asarray(samples_16k, dtype=np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_values
        # the padding comes after the normalisation: true silence, whatever the speech's level
        inputs = F.pad(inputs, (0, frames * (SAMPLE_RATE // fps) - inputs.shape[1]))
        model = self.model
        conv = model.feature_extractor(inputs.to(model.device, model.dtype))  # [1, channels, 50 Hz rows]
        conv = F.interpolate(conv, size=frames, mode="linear", align_corners=True).transpose(1, 2)
        hidden, _ = model.feature_projection(conv)
        layer_inputs: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_pre_hook(lambda _module, args: layer_inputs.append(args[0]))
            for layer in model.encoder.layers
        ]
        try:
            last = model.encoder(hidden).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        return torch.cat([last, *layer_inputs, last], dim=-1)[0].float()
