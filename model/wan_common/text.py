"""Prompt embeddings for Wan models: the umt5-xxl encoder, as transformers' UMT5EncoderModel.

The reference cleans each prompt (ftfy, HTML entities, whitespace), tokenizes it padded to 512
tokens, runs the encoder with the padding masked, and keeps only each prompt's real tokens; the
transformer then pads them back to 512 with zeros. `TextEncoder.encode` returns that padded form.

`TextEncoder` is a diffusers model component (a ModelMixin holding the UMT5EncoderModel), so that
a pipeline can save and load it; its folder is UMT5EncoderModel's own, and the tokenizer is
the pipeline's `tokenizer` component, saved in a folder of its own.
"""

from __future__ import annotations

import collections
import html
from collections.abc import Callable
from pathlib import Path

import ftfy
import regex
import torch
from diffusers.models.modeling_utils import ModelMixin
from transformers import AutoTokenizer, PreTrainedTokenizerBase, UMT5Config, UMT5EncoderModel
from transformers.utils import SAFE_WEIGHTS_NAME

from .checkpoint import load_streamed, parameters_on_meta, read_pth, read_safetensors
from .config import TEXT_LEN, UMT5_XXL_ENCODER_CONFIG, sharded_weights_name
from .convert_t5 import convert_t5_key


class TextEncoder(ModelMixin):
    """Tokenizer + UMT5 encoder; `encode` turns prompts into [B, text_len, d_model] embeddings.

    `tokenizer` may be None until it is given (DiffusionPipeline loads it as its own component).
    """

    def __init__(
        self, model: UMT5EncoderModel, tokenizer: PreTrainedTokenizerBase | None, text_len: int = TEXT_LEN
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = text_len

    @classmethod
    def from_official(
        cls,
        checkpoint: Path,
        tokenizer_dir: Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        encoder_config: dict | None = None,
    ) -> TextEncoder:
        """Load `models_t5_umt5-xxl-enc-bf16.pth` (streamed) and the `google/umt5-xxl` tokenizer.

        When the file's safetensors shards and their index are beside it (convert_t5's
        `sharded_weights_name`, as the baked image has them) they are read instead, shard by shard.
        `encoder_config` overrides the umt5-xxl hyper-parameters (the file has none).
        """
        config = UMT5Config(**(encoder_config or UMT5_XXL_ENCODER_CONFIG), is_encoder_decoder=False)
        with parameters_on_meta():
            model = UMT5EncoderModel(config)
        sharded = sharded_weights_name(checkpoint.name)
        if (checkpoint.parent / f"{sharded}.index.json").is_file():
            tensors = read_safetensors(checkpoint.parent, sharded)
        else:
            tensors = read_pth(checkpoint)
        load_streamed(model, tensors, convert_t5_key, device, dtype)
        return cls(model, AutoTokenizer.from_pretrained(tokenizer_dir))

    @classmethod
    def from_pretrained(
        cls,
        model_dir: Path,
        tokenizer_dir: Path | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        torch_dtype: torch.dtype | None = None,
        **loading_options,
    ) -> TextEncoder:
        """Load folders written by `save_pretrained` (weights streamed like the official file).

        Without `tokenizer_dir` the encoder has no tokenizer until one is given. `torch_dtype` is
        how DiffusionPipeline.from_pretrained names `dtype` (default float32, as diffusers loads
        models; the reference runs this one in bfloat16); its other `loading_options` are for
        diffusers' own loader and are not needed here.
        """
        with parameters_on_meta():
            model = UMT5EncoderModel(UMT5Config.from_pretrained(model_dir))
        dtype = dtype or torch_dtype or torch.float32
        load_streamed(model, read_safetensors(Path(model_dir), SAFE_WEIGHTS_NAME), str, device, dtype)
        tokenizer = None if tokenizer_dir is None else AutoTokenizer.from_pretrained(tokenizer_dir)
        return cls(model, tokenizer)

    def save_pretrained(self, model_dir: Path, tokenizer_dir: Path | None = None, **saving_options) -> None:
        """UMT5EncoderModel's folder (`saving_options` are its `save_pretrained`'s), and the
        tokenizer's if `tokenizer_dir` is given."""
        self.model.save_pretrained(model_dir, **saving_options)
        if tokenizer_dir is not None:
            self._require_tokenizer().save_pretrained(tokenizer_dir)

    def _require_tokenizer(self) -> PreTrainedTokenizerBase:
        if self.tokenizer is None:
            raise ValueError(
                "this TextEncoder has no tokenizer: pass one to TextEncoder(...), or load it through "
                "its pipeline, which gives it the pipeline's `tokenizer` component"
            )
        return self.tokenizer

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[len(prompts), text_len, d_model] in the model's dtype, zero after each prompt's tokens."""
        tokens = self._require_tokenizer()(
            [clean_prompt(prompt) for prompt in prompts],
            padding="max_length",
            truncation=True,
            max_length=self.text_len,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = self.model.device
        mask = tokens.attention_mask.to(device)
        hidden = self.model(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def clean_prompt(text: str) -> str:
    """The reference's 'whitespace' cleaning: mojibake and HTML entities fixed, spaces collapsed."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


class PromptCache:
    """The text encoder's states for the last `size` prompts used, so a repeated prompt (the default
    and the negative one above all) is encoded once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._states: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()

    def get(self, prompt: str, encode: Callable[[str], torch.Tensor]) -> torch.Tensor:
        """`prompt`'s states, from `encode(prompt)` the first time (and after it has fallen out)."""
        cached = self._states.get(prompt)
        if cached is None:
            cached = self._states[prompt] = encode(prompt)
            if len(self._states) > self.size:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(prompt)
        return cached
