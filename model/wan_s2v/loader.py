"""Loading every Wan2.2-S2V component, from the official checkpoint layout or a diffusers layout.

The official layout (`Wan-AI/Wan2.2-S2V-14B` as published) is read in place, with no re-save: the
transformer's safetensors shards through its index, `Wan2.1_VAE.pth`, the umt5 `.pth`, and the
tokenizer and wav2vec2 folders. Tensors are renamed on the fly and streamed one by one to the
target device and dtype, so host memory stays near one tensor above what the target device holds.

`save_diffusers_layout` writes the same components as a diffusers pipeline folder (model_index.json
and a folder per component, which `DiffusionPipeline.from_pretrained` loads as a WanS2VPipeline);
`load_components` reads either layout.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

from model.wan_common.checkpoint import load_streamed, parameters_on_meta, read_safetensors
from model.wan_common.scheduler import make_scheduler
from model.wan_common.text import TextEncoder
from model.wan_common.vae import WanVideoVAE

from .config import (
    SAMPLE_SHIFT,
    SAMPLE_SOLVER,
    SAMPLE_STEPS,
    T5_CHECKPOINT_FILE,
    T5_TOKENIZER_DIR,
    TRANSFORMER_CONFIG_FILE,
    VAE_CHECKPOINT_FILE,
    WAV2VEC_DIR,
)
from .convert_transformer import convert_transformer_config, convert_transformer_key
from .pipeline import WanS2VPipeline
from .speech import SpeechEncoder
from .transformer import WanS2VTransformer3DModel

MODEL_INDEX_FILE = "model_index.json"
_SUBFOLDERS = {
    "transformer": "transformer",
    "vae": "vae",
    "text_encoder": "text_encoder",
    "tokenizer": "tokenizer",
    "speech_encoder": "speech_encoder",
}

@dataclasses.dataclass
class WanS2VComponents:
    """The loaded models of Wan2.2-S2V (all in eval mode, gradients off)."""

    transformer: WanS2VTransformer3DModel
    vae: WanVideoVAE
    text_encoder: TextEncoder
    speech_encoder: SpeechEncoder


def load_components(
    model_dir: Path,
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    *,
    vae_dtype: torch.dtype = torch.float32,
    speech_dtype: torch.dtype = torch.float32,
) -> WanS2VComponents:
    """Load all components from `model_dir` in either layout onto `device`.

    `dtype` is the transformer's and the text encoder's (the reference runs both in bfloat16);
    the VAE and wav2vec2 run in float32 in the reference.
    """
    model_dir = Path(model_dir)
    if (model_dir / MODEL_INDEX_FILE).is_file():
        return _load_diffusers_layout(model_dir, device, dtype, vae_dtype, speech_dtype)
    return _load_official_layout(model_dir, device, dtype, vae_dtype, speech_dtype)


def save_diffusers_layout(components: WanS2VComponents, folder: Path) -> None:
    """Write `components` as a WanS2VPipeline folder, loadable again with `load_components(folder, ...)`
    or `WanS2VPipeline.from_pretrained(folder)`."""
    pipeline = WanS2VPipeline(
        transformer=components.transformer,
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.text_encoder.tokenizer,
        speech_encoder=components.speech_encoder,
        scheduler=make_scheduler(SAMPLE_SOLVER, SAMPLE_STEPS, SAMPLE_SHIFT)[0],
    )
    pipeline.save_pretrained(folder)


def _load_official_layout(
    model_dir: Path, device, dtype: torch.dtype, vae_dtype: torch.dtype, speech_dtype: torch.dtype
) -> WanS2VComponents:
    official_config = json.loads((model_dir / TRANSFORMER_CONFIG_FILE).read_text())
    with parameters_on_meta():
        transformer = WanS2VTransformer3DModel.from_config(convert_transformer_config(official_config))
    load_streamed(
        transformer,
        read_safetensors(model_dir, SAFETENSORS_WEIGHTS_NAME),
        convert_transformer_key,
        device,
        dtype,
    )
    return WanS2VComponents(
        transformer=transformer,
        vae=WanVideoVAE.from_official(model_dir / VAE_CHECKPOINT_FILE, device, vae_dtype),
        text_encoder=TextEncoder.from_official(
            model_dir / T5_CHECKPOINT_FILE, model_dir / T5_TOKENIZER_DIR, device, dtype
        ),
        speech_encoder=SpeechEncoder.from_pretrained(model_dir / WAV2VEC_DIR, device, speech_dtype),
    )


def _load_diffusers_layout(
    folder: Path, device, dtype: torch.dtype, vae_dtype: torch.dtype, speech_dtype: torch.dtype
) -> WanS2VComponents:
    transformer_dir = folder / _SUBFOLDERS["transformer"]
    with parameters_on_meta():
        transformer = WanS2VTransformer3DModel.from_config(
            WanS2VTransformer3DModel.load_config(transformer_dir)
        )
    load_streamed(transformer, read_safetensors(transformer_dir, SAFETENSORS_WEIGHTS_NAME), str, device, dtype)
    return WanS2VComponents(
        transformer=transformer,
        vae=WanVideoVAE.from_pretrained(folder / _SUBFOLDERS["vae"], device, vae_dtype),
        text_encoder=TextEncoder.from_pretrained(
            folder / _SUBFOLDERS["text_encoder"], folder / _SUBFOLDERS["tokenizer"], device, dtype
        ),
        speech_encoder=SpeechEncoder.from_pretrained(folder / _SUBFOLDERS["speech_encoder"], device, speech_dtype),
    )
