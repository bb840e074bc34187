"""Speech features for InfiniteTalk: chinese-wav2vec2-base's layers, one row per video frame.

As the reference computes them (`generate_infinitetalk.py`'s `get_embedding` with
`src/audio_analysis/wav2vec2.py`): the convolutional features of the whole recording (50 per
second) are linearly resampled to one per video frame at FPS (align_corners, to
int(seconds * FPS) rows) *before* the transformer layers run, so the encoder itself works at the
video's rate. The output of every transformer layer is kept (not the embeddings' output before
the first): [frames, layers, hidden]. The transformer then sees, for each video frame, the rows
of the AUDIO_WINDOW frames centred on it, clamped at the ends of the speech (`frame_windows`).

The wav2vec2 run itself is model/wan_common/wav2vec2_frames.py's.
"""

from __future__ import annotations

import numpy as np
import torch

from model.base import SPEECH_SAMPLE_RATE
from model.wan_common.wav2vec2_frames import FrameRateSpeechEncoder

from .config import AUDIO_WINDOW, FPS


class SpeechEncoder(FrameRateSpeechEncoder):
    """wav2vec2 (such as `chinese-wav2vec2-base/`) run as InfiniteTalk runs it."""

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
        hidden = self.frame_states(self.normalised(samples_16k), frames)
        last, layer_outputs = self.run_layers(hidden, keep="outputs")
        if self.model.config.do_stable_layer_norm:
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
