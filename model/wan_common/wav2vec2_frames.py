"""wav2vec2 run at the video's frame rate, as InfiniteTalk and OmniAvatar run it.

The convolutional features of the whole recording (50 a second) are linearly resampled
(align_corners) to one row per video frame *before* the transformer layers run, so the encoder
itself works at the video's rate. What each model keeps of the layers differs (their outputs, or
their inputs), so `run_layers` gives either. The feature extractor's settings (normalisation) are
read from the wav2vec2 folder, as `Wav2Vec2FeatureExtractor.from_pretrained` reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from model.base import SPEECH_SAMPLE_RATE


class FrameRateSpeechEncoder:
    """A transformers wav2vec2 model (any pre-training head in the folder is not needed) and its feature extractor."""

    def __init__(self, model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor) -> None:
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Self:
        """Load a transformers wav2vec2 folder (`chinese-wav2vec2-base/`, `wav2vec2-base-960h/`)."""
        model = Wav2Vec2Model.from_pretrained(folder, dtype=dtype).to(device)
        return cls(model, Wav2Vec2FeatureExtractor.from_pretrained(folder))

    def normalised(self, samples_16k: np.ndarray) -> torch.Tensor:
        """The feature extractor's input values for mono 16 kHz speech: [1, samples]."""
        return self.feature_extractor(
            np.asarray(samples_16k, dtype=np.float32), sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="pt"
        ).input_values

    def frame_states(self, input_values: torch.Tensor, frames: int) -> torch.Tensor:
        """The projected convolutional features resampled to `frames` rows: [1, frames, hidden]."""
        model = self.model
        conv = model.feature_extractor(input_values.to(model.device, model.dtype))  # [1, channels, 50 Hz rows]
        conv = F.interpolate(conv, size=frames, mode="linear", align_corners=True).transpose(1, 2)
        hidden, _ = model.feature_projection(conv)
        return hidden

    def run_layers(
        self, hidden: torch.Tensor, keep: Literal["inputs", "outputs"]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The encoder's last hidden state and, for every transformer layer, its input or its output."""
        kept: list[torch.Tensor] = []

        def keep_input(_module, args):
            kept.append(args[0])

        def keep_output(_module, _inputs, output):
            kept.append(output[0] if isinstance(output, tuple) else output)

        layers = self.model.encoder.layers
        if keep == "inputs":
            hooks = [layer.register_forward_pre_hook(keep_input) for layer in layers]
        else:
            hooks = [layer.register_forward_hook(keep_output) for layer in layers]
        try:
            last = self.model.encoder(hidden).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        return last, kept
