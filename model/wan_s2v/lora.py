"""Merging the Live Avatar LoRA into a loaded Wan2.2-S2V transformer.

Live Avatar trained its LoRA with peft on the official `WanModel_S2V`, so the file names the
official modules, in peft's spelling:

    [base_model.model.]blocks.3.self_attn.q.lora_A[.default].weight   A: [rank, in_features]
    [base_model.model.]blocks.3.self_attn.q.lora_B[.default].weight   B: [out_features, rank]

peft's target names ("q", "k", "v", "o", "ffn.0", "ffn.2") match by suffix, so the audio
injectors' attention (`audio_injector.injector.N.q`) has pairs too. (The reference's non-strict
load only fills keys that carry the adapter name `.default`; both spellings are taken here.)

Any other tensor replaces the base parameter of that name (`...q.base_layer.weight` is peft's
name for the weight of a layer it wraps), as the reference's non-strict `load_state_dict` does
before merging. Each pair then adds (alpha / rank) * B @ A to its weight, computed in float32 on
the weight's device.

The whole file is checked before the model is touched, so a file that does not fit leaves the
transformer as it was. Tensors are read one at a time from the memory-mapped file: besides the
model, memory holds one layer's update at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .config import LORA_FILE, LORA_REPO_ID
from .convert_transformer import convert_transformer_key

log = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."
# peft wraps each target layer and moves its original parameters under `base_layer`.
_PEFT_BASE_LAYER = ".base_layer."
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight")
_MERGEABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclasses.dataclass(frozen=True)
class LoraMergeSummary:
    """What `merge_lora` changed."""

    merged_layers: int
    replaced_tensors: int
    rank: int | None  # None when the file has no A/B pairs


@dataclasses.dataclass(frozen=True)
class _LoraPair:
    parameter: str  # our name of the weight the pair updates
    a_key: str
    b_key: str
    rank: int


def merge_lora(transformer: nn.Module, path: Path, alpha: float) -> LoraMergeSummary:
    """Merge the LoRA file at `path` into `transformer`'s weights in place.

    Call it right after loading, on real tensors (CPU or GPU, float32 or bfloat16), and before a
    memory mode quantises or offloads the transformer: those keep copies this would not reach.

    Raises ValueError naming the file and the key when a key maps to no parameter, when a shape
    does not fit, when an A has no B (or a B no A), when ranks differ, or when the weight it
    would change holds no values; the transformer is unchanged then.
    """
    parameters = dict(transformer.named_parameters())
    with safe_open(path, framework="pt", device="cpu") as reader:
        pairs, replacements = _plan(path, reader, parameters)
        with torch.no_grad():
            # the reference loads the file's full tensors first and merges the pairs into them
            for key, name in replacements.items():
                parameters[name].copy_(reader.get_tensor(key))
            for pair in pairs:
                weight = parameters[pair.parameter]
                a = reader.get_tensor(pair.a_key).to(device=weight.device, dtype=torch.float32)
                b = reader.get_tensor(pair.b_key).to(device=weight.device, dtype=torch.float32)
                update = (b @ a) * (alpha / pair.rank)
                del a, b
                weight.copy_(update.add_(weight))
                del update
    summary = LoraMergeSummary(
        merged_layers=len(pairs),
        replaced_tensors=len(replacements),
        rank=pairs[0].rank if pairs else None,
    )
    log.info(
        "merged the LoRA %s: %d layers at rank %s, alpha %g, %d tensors replaced",
        path.name, summary.merged_layers, summary.rank, alpha, summary.replaced_tensors,
    )
    return summary


def _plan(path: Path, reader: safe_open, parameters: dict[str, nn.Parameter]) -> tuple[list[_LoraPair], dict[str, str]]:
    """The pairs to merge and the tensors to replace ({file key: our name}), all checked."""
    halves: dict[str, dict[str, str]] = {}
    replacements: dict[str, str] = {}
    for key in reader.keys():
        official = _official_name(key)
        match = _LORA_KEY.fullmatch(official)
        if match:
            parts = halves.setdefault(match["module"], {})
            if match["part"] in parts:
                first = parts[match["part"]]
                raise _file_error(path, key, f"is a second LoRA {match['part']} matrix of {match['module']} ({first})")
            parts[match["part"]] = key
            continue
        name = _our_parameter(path, key, official, parameters)
        if name in replacements.values():
            first = next(file_key for file_key, replaced in replacements.items() if replaced == name)
            raise _file_error(path, key, f"replaces {name}, which {first} replaces already")
        shape = tuple(reader.get_slice(key).get_shape())
        if shape != tuple(parameters[name].shape):
            raise _file_error(path, key, f"has shape {shape} but {name} has {tuple(parameters[name].shape)}")
        replacements[key] = name

    pairs: list[_LoraPair] = []
    for module, parts in halves.items():
        for part, other in (("A", "B"), ("B", "A")):
            if other not in parts:
                missing = f"{module}.lora_{other}.weight"
                raise _file_error(path, parts[part], f"is a LoRA {part} matrix without its {other} ({missing})")
        a_key, b_key = parts["A"], parts["B"]
        name = _our_parameter(path, a_key, f"{module}.weight", parameters)
        a_shape = tuple(reader.get_slice(a_key).get_shape())
        b_shape = tuple(reader.get_slice(b_key).get_shape())
        weight_shape = tuple(parameters[name].shape)
        fits = len(a_shape) == 2 and len(b_shape) == 2 and b_shape[1] == a_shape[0]
        if not fits or (b_shape[0], a_shape[1]) != weight_shape:
            raise _file_error(
                path, a_key,
                f"and {b_key} have shapes {a_shape} and {b_shape}, which do not make an update of "
                f"{name} {weight_shape} (A is [rank, in], B is [out, rank])",
            )
        if pairs and a_shape[0] != pairs[0].rank:
            raise _file_error(path, a_key, f"has rank {a_shape[0]} but {pairs[0].a_key} has rank {pairs[0].rank}")
        pairs.append(_LoraPair(parameter=name, a_key=a_key, b_key=b_key, rank=a_shape[0]))

    return pairs, replacements


def _official_name(key: str) -> str:
    """The official name behind a file key: without peft's model prefix and base-layer wrapper."""
    return key.removeprefix(_PEFT_PREFIX).replace(_PEFT_BASE_LAYER, ".")


def _our_parameter(path: Path, key: str, official: str, parameters: dict[str, nn.Parameter]) -> str:
    """Our name of the parameter an official name stands for, checked to be there and loaded."""
    try:
        name = convert_transformer_key(official)
    except KeyError:
        raise _file_error(path, key, f"names no parameter of the official Wan2.2-S2V transformer ({official})") from None
    if name not in parameters:
        raise _file_error(path, key, f"is for {name}, which this transformer does not have")
    weight = parameters[name]
    if weight.is_meta or weight.numel() == 0 or weight.dtype not in _MERGEABLE_DTYPES:
        state = "on the meta device" if weight.is_meta else f"{weight.dtype}, shape {tuple(weight.shape)}"
        raise ValueError(
            f"cannot merge the LoRA {path} into {name} ({state}): merge right after the weights are "
            "loaded, before a memory mode quantises or offloads the transformer"
        )
    return name


def _file_error(path: Path, key: str, problem: str) -> ValueError:
    return ValueError(
        f"LoRA file {path}: {key} {problem}; the file must be a LoRA for Wan2.2-S2V-14B under the "
        f"official module names, such as {LORA_FILE} of {LORA_REPO_ID}: replace it with that one"
    )
