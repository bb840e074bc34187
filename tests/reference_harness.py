"""What the reference harnesses (infinitetalk_, omniavatar_, liveavatar_reference.py) share.

- stand-ins for packages this environment lacks (`Unavailable`, `stand_in_module_factory`);
- the imports to make before any stand-in is registered, and no bytecode written into a checkout;
- running a reference's own statements cut out of its syntax tree (`statement_bodies`,
  `statements_between`, `run_statements`);
- transformers 4's wav2vec2 encoder contract, which the references' wav2vec2 subclasses rely on;
- tiny random weights: `randomize_` for a Wan2.1 transformer, `write_tiny_wav2vec2` for a folder.
"""

from __future__ import annotations

import ast
import contextlib
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor

from tests.reference_checkout import plain_module

# --- stand-ins --------------------------------------------------------------------------------


class Unavailable:
    """A name from a package this environment lacks; fails clearly if the harness path uses it."""

    def __init__(self, name: str, harness: str):
        self._name = name
        self._harness = harness

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a stand-in: the {self._harness} harness does not provide it")

    def __getattr__(self, key: str):
        if key.startswith("__"):
            raise AttributeError(key)
        return Unavailable(f"{self._name}.{key}", self._harness)


def stand_in_module_factory(harness: str) -> Callable[[str, dict[str, Any]], types.ModuleType]:
    """`ReferenceCheckout`'s `stand_in_module`: a module with `attributes` whose other names are `Unavailable`."""

    def stand_in_module(name: str, attributes: dict[str, Any]) -> types.ModuleType:
        module = plain_module(name, attributes)

        def missing(key: str):
            if key.startswith("__"):
                raise AttributeError(key)
            return Unavailable(f"{name}.{key}", harness)

        module.__getattr__ = missing  # type: ignore[method-assign]
        return module

    return stand_in_module


def import_before_stand_ins() -> None:
    """diffusers' model base and transformers' wav2vec2 probe for torchvision when they load, and a
    stand-in (with no import spec) would make that probe fail: they are imported first."""
    import diffusers.models.modeling_utils  # noqa: F401
    import transformers.models.wav2vec2.modeling_wav2vec2  # noqa: F401
    from transformers import Wav2Vec2FeatureExtractor  # noqa: F401


@contextlib.contextmanager
def no_bytecode() -> Iterator[None]:
    """The checkout stays as it was: no __pycache__ folders written into it."""
    saved = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = saved


# --- a reference's statements, run on their own -----------------------------------------------


def statement_bodies(tree: ast.AST) -> Iterator[list[ast.stmt]]:
    """Every list of statements in `tree` (bodies, else and finally blocks)."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                yield body


def statements_between(tree: ast.AST, first: str, last: str) -> list[ast.stmt] | None:
    """The statements of one block of `tree` from the one whose source starts with `first` to the
    one starting with `last`, both included; None when no block has them in that order."""
    for body in statement_bodies(tree):
        sources = [ast.unparse(statement) for statement in body]
        starts = [index for index, source in enumerate(sources) if source.startswith(first)]
        stops = [index for index, source in enumerate(sources) if source.startswith(last)]
        if starts and stops and stops[-1] >= starts[0]:
            return body[starts[0] : stops[-1] + 1]
    return None


def run_statements(statements: list[ast.stmt], filename: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute `statements` (a pinned reference's own) in `namespace`, which is returned."""
    code = compile(ast.Module(body=statements, type_ignores=[]), filename, "exec")
    exec(code, namespace)  # noqa: S102 - the pinned reference's own statements
    return namespace


# --- wav2vec2 ---------------------------------------------------------------------------------


class Transformers4Encoder(torch.nn.Module):
    """A wav2vec2 encoder keeping transformers 4's contract, which the references' wav2vec2
    subclasses rely on: with `output_hidden_states`, the input of every layer and then the final output.

    transformers 5 records hidden states only in the decorated top-level forward, which the
    references' subclasses replace, so their encoder call would return none.
    """

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, hidden_states, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        from transformers.modeling_outputs import BaseModelOutput

        layer_inputs: list[torch.Tensor] = []
        hooks = [
            layer.register_forward_pre_hook(lambda module, args: layer_inputs.append(args[0]))
            for layer in self.encoder.layers
        ]
        try:
            last = self.encoder(hidden_states, attention_mask=attention_mask).last_hidden_state
        finally:
            for hook in hooks:
                hook.remove()
        hidden = (*layer_inputs, last) if output_hidden_states else None
        return BaseModelOutput(last_hidden_state=last, hidden_states=hidden)


def write_tiny_wav2vec2(
    folder: Path, model_class: type[PreTrainedModel], seed: int, conv_channels: int, **config: Any
) -> Path:
    """A wav2vec2 folder of `model_class` (a pre-training or CTC checkpoint) with group-normalised
    convolutions of `conv_channels`, post-layer-norm transformer layers, the standard 320-sample hop
    and a normalising feature extractor, as the base models are laid out; `config` sets the rest
    (sizes, the head's settings)."""
    torch.manual_seed(seed)
    wav2vec2_config = Wav2Vec2Config(
        num_attention_heads=2,
        conv_dim=(conv_channels,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        conv_bias=False,
        **config,
    )
    model_class(wav2vec2_config).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=False
    ).save_pretrained(folder)
    return folder


# --- Wan2.1 transformer weights -----------------------------------------------------------------


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05, qk_norm_scale: float = 1.5) -> None:
    """Every parameter drawn anew, in place: N(0, scale), so that no layer is the identity or zero
    (the references zero their output heads), norm weights near 1 and the q/k RMSNorm weights near
    `qk_norm_scale`, so that attention logits are O(1) and rotary positions matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            noise = torch.randn(parameter.shape, generator=generator)
            if name.rsplit(".", 1)[-1] == "weight" and ("norm_q" in name or "norm_k" in name):
                parameter.copy_(qk_norm_scale * (1.0 + 0.1 * noise))
            elif "norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_(scale * noise)
