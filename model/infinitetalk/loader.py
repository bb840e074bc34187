"""Loading InfiniteTalk's models from their published layouts, read in place (no re-save).

- `Wan-AI/Wan2.1-I2V-14B-480P`: the transformer's safetensors shards (through their index) and
  config.json, `Wan2.1_VAE.pth`, the umT5 `.pth` and its tokenizer, the CLIP `.pth` (its vision
  tower only);
- `MeiGen-AI/InfiniteTalk`: `single/infinitetalk.safetensors`, read after the shards as the
  reference merges them (a tensor in both takes the later file's value), and
  `multi/infinitetalk.safetensors`, the two-speaker weights, kept in host memory and swapped in
  for two-speaker jobs (`SpeakerWeights`);
- `TencentGameMate/chinese-wav2vec2-base`: a transformers folder.

Tensors are streamed one at a time to the target device and dtype (model/wan_common/checkpoint.py).
The transformer's audio input size (the wav2vec2 layers and width per row) is the wav2vec2
folder's, which the published model fixes at 12 x 768.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from transformers import CLIPVisionModel

from model.wan_common.checkpoint import load_streamed, parameters_on_meta, read_pth, read_safetensors
from model.wan_common.clip_image import VIT_H_14, ImageEncoder, convert_visual_state_dict, vision_config
from model.wan_common.config import T5_CHECKPOINT_FILE, T5_TOKENIZER_DIR, TRANSFORMER_CONFIG_FILE, VAE_CHECKPOINT_FILE
from model.wan_common.text import TextEncoder
from model.wan_common.vae import WanVideoVAE

from .convert_transformer import convert_transformer_config, convert_transformer_key
from .declaration import CLIP_CHECKPOINT_FILE, SINGLE_SPEAKER_FILE, TWO_SPEAKER_FILE
from .speech import SpeechEncoder
from .transformer import InfiniteTalkTransformer3DModel

# The image encoder's tower (the official file has no config; tests load a tiny one instead).
IMAGE_TOWER: Mapping[str, Any] = VIT_H_14


@dataclasses.dataclass(frozen=True)
class WeightFolders:
    """Where each published set of weights is."""

    base: Path  # Wan2.1-I2V-14B-480P
    wav2vec: Path  # chinese-wav2vec2-base
    infinitetalk: Path  # InfiniteTalk (single/ and multi/)


class SpeakerWeights:
    """The transformer's tensors that differ between the one- and two-speaker weights, both sets in
    host memory in the model's dtype; `use(speakers)` copies the set a job needs into the model."""

    def __init__(self, model: torch.nn.Module, two_speaker: dict[str, torch.Tensor]) -> None:
        parameters = dict(model.named_parameters())
        self._parameters = {name: parameters[name] for name in two_speaker}
        self._sets = {
            1: {name: parameter.detach().to("cpu", copy=True) for name, parameter in self._parameters.items()},
            2: two_speaker,
        }
        self.speakers = 1

    def use(self, speakers: int) -> None:
        if speakers == self.speakers:
            return
        with torch.no_grad():
            for name, tensor in self._sets[speakers].items():
                self._parameters[name].data.copy_(tensor)
        self.speakers = speakers


@dataclasses.dataclass
class InfiniteTalkComponents:
    """The loaded models (eval mode, gradients off)."""

    transformer: InfiniteTalkTransformer3DModel
    speaker_weights: SpeakerWeights
    vae: WanVideoVAE
    text_encoder: TextEncoder
    image_encoder: ImageEncoder
    speech_encoder: SpeechEncoder


def load_components(
    folders: WeightFolders, device: torch.device, dtype: torch.dtype, image_dtype: torch.dtype
) -> InfiniteTalkComponents:
    """Every model, the transformer and umT5 in `dtype` (bf16 on a GPU, as the reference), CLIP in
    `image_dtype` (the reference's float16), the VAE and wav2vec2 in float32, all on `device`."""
    speech_encoder = SpeechEncoder.from_pretrained(folders.wav2vec, device, torch.float32)
    transformer = _load_transformer(folders, speech_encoder.model.config, device, dtype)
    two_speaker = {
        name: tensor.to(dtype) for name, tensor in _converted(folders.infinitetalk / TWO_SPEAKER_FILE)
    }
    return InfiniteTalkComponents(
        transformer=transformer,
        speaker_weights=SpeakerWeights(transformer, two_speaker),
        vae=WanVideoVAE.from_official(folders.base / VAE_CHECKPOINT_FILE, device, torch.float32),
        text_encoder=TextEncoder.from_official(
            folders.base / T5_CHECKPOINT_FILE, folders.base / T5_TOKENIZER_DIR, device, dtype
        ),
        image_encoder=load_image_encoder(folders.base / CLIP_CHECKPOINT_FILE, device, image_dtype),
        speech_encoder=speech_encoder,
    )


def transformer_config(base: Path, wav2vec_config: Any) -> dict[str, Any]:
    """The transformer's arguments: the published config.json's, with the speech encoder's rows."""
    published = json.loads((base / TRANSFORMER_CONFIG_FILE).read_text())
    return {
        **convert_transformer_config(published),
        "audio_layers": wav2vec_config.num_hidden_layers,
        "audio_channels": wav2vec_config.hidden_size,
    }


def _load_transformer(
    folders: WeightFolders, wav2vec_config: Any, device: torch.device, dtype: torch.dtype
) -> InfiniteTalkTransformer3DModel:
    with parameters_on_meta():
        transformer = InfiniteTalkTransformer3DModel(**transformer_config(folders.base, wav2vec_config))
    tensors = itertools.chain(
        read_safetensors(folders.base, SAFETENSORS_WEIGHTS_NAME),
        _published(folders.infinitetalk / SINGLE_SPEAKER_FILE),
    )
    load_streamed(transformer, tensors, convert_transformer_key, device, dtype)
    return transformer


def _published(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of an InfiniteTalk file, or of its shards where the baked image keeps it so."""
    return read_safetensors(path.parent, path.name)


def _converted(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for key, tensor in _published(path):
        yield convert_transformer_key(key), tensor


def load_image_encoder(path: Path, device: torch.device, dtype: torch.dtype) -> ImageEncoder:
    """The official CLIP `.pth`'s vision tower (without its last block), streamed."""
    config = vision_config(IMAGE_TOWER)
    with parameters_on_meta():
        model = CLIPVisionModel(config)
    converted = convert_visual_state_dict(dict(read_pth(path)), IMAGE_TOWER["num_hidden_layers"])
    # some transformers versions nest the tower under `vision_model.` in CLIPVisionModel's names
    prefix = "vision_model." if any(key.startswith("vision_model.") for key in model.state_dict()) else ""
    load_streamed(model, ((prefix + key, value) for key, value in converted.items()), str, device, dtype)
    return ImageEncoder(model)
