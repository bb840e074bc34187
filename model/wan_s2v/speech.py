"""Speech features for Wan2.2-S2V: every hidden layer of wav2vec2, one column per video frame.

The reference (`wan/modules/s2v/audio_encoder.py`) runs wav2vec2 over the whole recording, stacks
all hidden states, linearly resamples them from wav2vec2's 50 frames per second to a fixed 30, and
then picks, for video frame i, the 30 fps column nearest to i / fps (numpy's round-half-to-even).
Frames past the end of the speech get zero features. `SpeechEncoder.encode` returns the picked
columns for every frame that has speech; `bucket_clip_features` cuts one clip out of them, padding
with zeros, which is exactly the reference's `get_audio_embed_bucket_fps` followed by its slice.

`SpeechEncoder` is a diffusers model component (a ModelMixin holding the Wav2Vec2Model), so that
WanS2VPipeline can save and load it; its folder is a transformers wav2vec2 folder with the
feature extractor's settings beside the weights, as the official checkpoint ships it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.modeling_utils import ModelMixin
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

from .config import FPS, FRAMES_PER_CLIP, SPEECH_FEATURE_RATE, SPEECH_SAMPLE_RATE, WAV2VEC_FRAME_RATE


class SpeechEncoder(ModelMixin):
    """wav2vec2 (the checkpoint's CTC head is not needed) with the reference's resampling."""

    def __init__(self, model: Wav2Vec2Model, feature_extractor: Wav2Vec2FeatureExtractor) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        torch_dtype: torch.dtype | None = None,
        **loading_options,
    ) -> SpeechEncoder:
        """Load a transformers wav2vec2 folder such as `wav2vec2-large-xlsr-53-english/`.

        `torch_dtype` is how DiffusionPipeline.from_pretrained names `dtype` (default float32); its
        other `loading_options` are for diffusers' own loader and are not needed here.
        """
        # ~0.3B parameters: read on the host, then moved; the CTC head in the folder is skipped.
        model = Wav2Vec2Model.from_pretrained(folder, dtype=dtype or torch_dtype or torch.float32).to(device)
        return cls(model, Wav2Vec2FeatureExtractor.from_pretrained(folder))

    def save_pretrained(self, folder: str | Path, **saving_options) -> None:
        """The wav2vec2 folder (`saving_options` are Wav2Vec2Model's `save_pretrained`'s)."""
        self.model.save_pretrained(folder, **saving_options)
        self.feature_extractor.save_pretrained(folder)

    @property
    def num_layers(self) -> int:
        """Hidden states per frame: the embedding output plus one per transformer layer."""
        return self.model.config.num_hidden_layers + 1

    @torch.no_grad()
    def encode(self, samples_16k: np.ndarray, fps: int = FPS) -> torch.Tensor:
        """Features of mono 16 kHz speech: float32 [num_layers, hidden_size, num_speech_frames].

        Column i belongs to video frame i at `fps` (the quality mode's 16 by default; the fast
        mode's is Live Avatar's 25); frames after the last column have no speech.
        """
        inputs = self.feature_extractor(
            np.asarray(samples_16k, dtype=np.float32),
            sampling_rate=SPEECH_SAMPLE_RATE,
            return_tensors="pt",
        ).input_values
        device = self.model.device
        outputs = self.model(inputs.to(device, self.model.dtype), output_hidden_states=True)
        # [num_layers, hidden, wav2vec frames], resampled in float32 whatever the model's dtype
        layers = torch.cat(outputs.hidden_states).transpose(1, 2).float()
        resampled_len = _resampled_length(layers.shape[-1])
        resampled = F.interpolate(layers, size=resampled_len, mode="linear", align_corners=True)
        source_columns = _source_columns(resampled_len, fps)
        return resampled[:, :, torch.from_numpy(source_columns).to(device)]

    def num_clips(self, num_samples: int, frames_per_clip: int = FRAMES_PER_CLIP, fps: int = FPS) -> int:
        """How many clips the reference generates for `num_samples` of 16 kHz speech.

        This is the reference's count, which adds a clip when the speech ends exactly on a clip
        boundary; the caller trims the video to the speech.
        """
        wav2vec_frames = num_samples
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride, strict=True):
            wav2vec_frames = (wav2vec_frames - kernel) // stride + 1
        resampled_len = _resampled_length(wav2vec_frames)
        return int(resampled_len / (frames_per_clip * (SPEECH_FEATURE_RATE / fps))) + 1


def bucket_clip_features(
    features: torch.Tensor, clip_index: int, frames_per_clip: int = FRAMES_PER_CLIP
) -> torch.Tensor:
    """The speech features of one clip: [1, num_layers, hidden_size, frames_per_clip].

    `features` is `SpeechEncoder.encode`'s output; frames past the speech are zeros.
    """
    if clip_index < 0:
        raise ValueError(f"clip_index must be >= 0, got {clip_index}")
    start = clip_index * frames_per_clip
    clip = features[:, :, start : start + frames_per_clip]
    missing = frames_per_clip - clip.shape[-1]
    if missing > 0:
        clip = F.pad(clip, (0, missing))
    return clip.unsqueeze(0)


def _resampled_length(wav2vec_frames: int) -> int:
    # Same float expression as the reference, so that the truncation lands on the same integer.
    return int(wav2vec_frames / float(WAV2VEC_FRAME_RATE) * SPEECH_FEATURE_RATE)


def _source_columns(resampled_len: int, fps: int) -> np.ndarray:
    """For each video frame that has speech, the index of its column at SPEECH_FEATURE_RATE."""
    max_frames = math.ceil(resampled_len * fps / SPEECH_FEATURE_RATE) + 1
    columns = np.round(np.arange(max_frames) / fps * SPEECH_FEATURE_RATE).astype(np.int64)
    return columns[columns < resampled_len]
