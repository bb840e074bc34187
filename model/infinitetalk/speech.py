"""Speech features for InfiniteTalk: chinese-wav2vec2-base's layers, one row per video frame.

As the reference computes them (`generate_infinitetalk.py`'s `get_embedding` with
`src/audio_analysis/wav2vec2.py`): the convolutional features of the whole recording (50 per
second) are linearly resampled to one per video frame at FPS (align_corners, to
int(seconds * FPS) rows) *before* the transformer layers run, so the encoder itself works at the
video's rate. The output of every transformer layer is kept (not the embeddings' output before
the first): [frames, layers, hidden]. The transformer then sees, for each video frame, the rows
of the AUDIO_WINDOW frames centred on it, clamped at the ends of the speech (`frame_windows`).

The feature extractor's settings (normalisation) are read from the wav2vec2 folder, as the
reference's `Wav2Vec2FeatureExtractor.from_pretrained` reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from model.base import SPEECH_SAMPLE_RATE

from .config import AUDIO_WINDOW, FPS


class SpeechEncoder:
    """wav2vec2 (any pre-training head in the folder is not needed) run as InfiniteTalk runs it."""

    def __init__(self, model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor) -> None:
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> SpeechEncoder:
        """Load a transformers wav2vec2 folder such as `chinese-wav2vec2-base/`."""
        model = Wav2Vec2Model.from_pretrained(folder, dtype=dtype).to(device)
        return cls(model, Wav2Vec2FeatureExtractor.from_pretrained(folder))

    @property
    def num_layers(self) -> int:
        """Feature rows per frame: one per transformer layer."""
        return self.model.config.num_hidden_layers

    @staticmethod
    def num_frames(num_samples: int, fps: int = FPS) -> int:
        """Video frames the speech covers: the reference's int(seconds * fps)."""
        return int(num_samples / SPEECH_SAMPLE_RATE * fps)

    @torch.no_grad()
    def encode(self, samples_16k: np.ndarray, fps: int = FPS) -> torch.Tensor:
        """Features of mono 16 kHz speech: float32 [frames, layers, hidden], row i for video frame i."""
        frames = self.num_frames(len(samples_16k), fps)
        if frames < 1:
            raise ValueError(f"speech of {len(samples_16k)} samples is shorter than one video frame at {fps} fps")
        inputs = self.feature_extractor(
            np.asarray(samples_16k, dtype=np.float32), sampling_rate=SPEECH_SAMPLE_RATE, return_tensors="pt"
        ).input_values
        model = self.model
        conv = model.feature_extractor(inputs.to(model.device, model.dtype))  # [1, channels, 50 Hz rows]
        conv = F.interpolate(conv, size=frames, mode="linear", align_corners=True).transpose(1, 2)
        hidden, _ = model.feature_projection(conv)
        layer_outputs: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            layer_outputs.append(output[0] if isinstance(output, tuple) else output)

        hooks = [layer.register_forward_hook(keep) for layer in model.encoder.layers]
        try:
            last = model.encoder(hidden).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        if model.config.do_stable_layer_norm:
            # that encoder normalises only its final output; the reference keeps it so
            layer_outputs[-1] = last
        return torch.stack(layer_outputs, dim=2)[0].float()


def frame_windows(features: torch.Tensor, start: int, stop: int, window: int = AUDIO_WINDOW) -> torch.Tensor:
    """For video frames start..stop-1, the rows of the `window` frames centred on each, clamped to
    the speech: [stop - start, window, layers, hidden] (one speaker's part of a clip's audio)."""
    if window % 2 != 1 or stop <= start or start < 0:
        raise ValueError(f"need an odd window and 0 <= start < stop, got window={window}, {start}..{stop}")
    offsets = torch.arange(window) - window // 2
    rows = (torch.arange(start, stop)[:, None] + offsets[None, :]).clamp(0, features.shape[0] - 1)
    return features[rows.to(features.device)]
