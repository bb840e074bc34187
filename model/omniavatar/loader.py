"""Loading OmniAvatar from the published folders, read in place (no re-save).

- Wan2.1-T2V-14B / -1.3B: the transformer's safetensors (six shards with an index, or one file),
  `Wan2.1_VAE.pth`, the umT5 `.pth` and its tokenizer;
- OmniAvatar-14B / -1.3B: `config.json` (the LoRA's rank and alpha, the input channels) and
  `pytorch_model.pt` (the LoRA, the 33-channel patch embedding, the audio modules);
- wav2vec2-base-960h.

The transformer is built with the widened patch embedding and the audio modules, filled from the
Wan2.1 tensors (streamed, renamed one by one; Wan2.1's 16-channel patch embedding is not used:
the reference overwrites it with the file's) and the file's own tensors, then the LoRA is merged
(lora.py says why merged). The audio modules' sizes follow the files: the speech rows' width is
the wav2vec2 model's (hidden size x (layers + 2)), the audio pack's width the file's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from model.wan_common.checkpoint import load_streamed, parameters_on_meta, read_safetensors
from model.wan_common.config import (
    T5_CHECKPOINT_FILE,
    T5_TOKENIZER_DIR,
    TRANSFORMER_CONFIG_FILE,
    VAE_CHECKPOINT_FILE,
)
from model.wan_common.text import TextEncoder
from model.wan_common.vae import WanVideoVAE

from .config import IN_CHANNELS, LORA_ALPHA, LORA_RANK
from .convert_transformer import convert_transformer_key
from .declaration import OMNIAVATAR_CONFIG_FILE, OMNIAVATAR_WEIGHTS_FILE, TRANSFORMER_SINGLE_FILE
from .lora import MergeSummary, merge_lora_
from .pipeline import OmniAvatarComponents
from .speech import SpeechEncoder
from .transformer import OmniAvatarTransformer3DModel

_PATCH_EMBEDDING = "patch_embedding."
_AUDIO_PACK_WEIGHT = "audio_proj.proj.weight"


def read_omniavatar_config(folder: Path) -> tuple[int, float, int]:
    """(LoRA rank, LoRA alpha, input channels) from OmniAvatar's config.json; ValueError if it is not one."""
    path = folder / OMNIAVATAR_CONFIG_FILE
    config = json.loads(path.read_text())
    if config.get("train_architecture", "lora") != "lora":
        raise ValueError(f"{path} is not a LoRA model (train_architecture {config['train_architecture']!r})")
    rank, alpha = int(config.get("lora_rank", LORA_RANK)), float(config.get("lora_alpha", LORA_ALPHA))
    return rank, alpha, int(config.get("in_dim", IN_CHANNELS))


def transformer_arguments(wan_config: Mapping, in_channels: int, audio_feature_dim: int, audio_hidden: int) -> dict:
    """OmniAvatarTransformer3DModel's arguments for an official Wan2.1-T2V config.json."""
    if wan_config.get("model_type", "t2v") != "t2v":
        raise ValueError(f"OmniAvatar is built on Wan2.1-T2V, not a {wan_config['model_type']!r} model")
    dim, heads = int(wan_config["dim"]), int(wan_config["num_heads"])
    return {
        "num_attention_heads": heads,
        "attention_head_dim": dim // heads,
        "in_channels": in_channels,
        "out_channels": int(wan_config["out_dim"]),
        "text_dim": int(wan_config.get("text_dim", 4096)),
        "freq_dim": int(wan_config["freq_dim"]),
        "ffn_dim": int(wan_config["ffn_dim"]),
        "num_layers": int(wan_config["num_layers"]),
        "eps": float(wan_config.get("eps", 1e-6)),
        "audio_feature_dim": audio_feature_dim,
        "audio_hidden_size": audio_hidden,
    }


def load_components(
    wan_dir: Path, omniavatar_dir: Path, wav2vec_dir: Path, device: torch.device | str, dtype: torch.dtype,
    *, vae_dtype: torch.dtype = torch.float32, speech_dtype: torch.dtype = torch.float32,
) -> tuple[OmniAvatarComponents, MergeSummary]:
    """Every model, the transformer and umT5 in `dtype` on `device` (the reference: bf16), the VAE
    and wav2vec2 in float32. Raises ValueError / KeyError / OSError for files that do not fit."""
    speech_encoder = SpeechEncoder.from_pretrained(wav2vec_dir, device, speech_dtype)
    rank, alpha, in_channels = read_omniavatar_config(omniavatar_dir)
    published = torch.load(omniavatar_dir / OMNIAVATAR_WEIGHTS_FILE, map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(published, Mapping):
        raise ValueError(f"{omniavatar_dir / OMNIAVATAR_WEIGHTS_FILE} is not a state dict")
    if _AUDIO_PACK_WEIGHT not in published:
        raise ValueError(f"{omniavatar_dir / OMNIAVATAR_WEIGHTS_FILE} has no {_AUDIO_PACK_WEIGHT}: is it OmniAvatar's?")
    wan_config = json.loads((wan_dir / TRANSFORMER_CONFIG_FILE).read_text())
    arguments = transformer_arguments(
        wan_config, in_channels, speech_encoder.feature_dim, int(published[_AUDIO_PACK_WEIGHT].shape[0])
    )
    with parameters_on_meta():
        transformer = OmniAvatarTransformer3DModel(**arguments)
    load_streamed(transformer, _transformer_tensors(wan_dir, published), convert_transformer_key, device, dtype)
    summary = merge_lora_(transformer, published, alpha)
    if summary.rank is not None and summary.rank != rank:
        raise ValueError(f"the OmniAvatar file's LoRA has rank {summary.rank}, its config.json says {rank}")
    components = OmniAvatarComponents(
        transformer=transformer,
        vae=WanVideoVAE.from_official(wan_dir / VAE_CHECKPOINT_FILE, device, vae_dtype),
        text_encoder=TextEncoder.from_official(wan_dir / T5_CHECKPOINT_FILE, wan_dir / T5_TOKENIZER_DIR, device, dtype),
        speech_encoder=speech_encoder,
    )
    return components, summary


def _transformer_tensors(
    wan_dir: Path, published: Mapping[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Wan2.1's tensors but its patch embedding, then the file's plain tensors (patch embedding,
    audio modules; the LoRA pairs are merged afterwards, its base-layer copies replace Wan2.1's there)."""
    for key, tensor in read_safetensors(wan_dir, TRANSFORMER_SINGLE_FILE):
        if not key.startswith(_PATCH_EMBEDDING):
            yield key, tensor
    for key, tensor in published.items():
        if "lora_" not in key and ".base_layer." not in key:
            yield key, tensor
