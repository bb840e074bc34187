"""OmniAvatar's LoRA, merged into the transformer's weights once, when the model is loaded.

Why merged and not attached (model/wan_common/lora.py's adapter): OmniAvatar is only ever run
with its LoRA, which is part of the model (trained together with the audio modules and the
widened patch embedding, all in one file), so there is no job without it to keep the base
weights for. Merged, a step costs what Wan2.1 costs (attached, every targeted linear would do
rank * (in + out) more multiply-adds per token: about 5 % at rank 128 on the 14B), and the
memory modes (fp8, offloading) see plain weights.

The file is the reference's `pytorch_model.pt`, loaded by its `add_lora_to_model`: peft's
`inject_adapter_in_model` wraps every linear named by LORA_TARGETS, then a non-strict
`load_state_dict` fills what the file names. So the file spells the LoRA as the wrapped model
does (`blocks.3.self_attn.q.lora_A.default.weight`, A: [rank, in], B: [out, rank]; a wrapped
layer's own weight as `...q.base_layer.weight`) and every other tensor (patch embedding, audio
modules) under its plain name; each replaces that parameter. Merged as peft computes a LoRA
linear: W + (alpha / rank) * B @ A (here in float32, then in W's dtype).

The file must hold the patch embedding and every audio parameter: the reference builds its model
in uninitialised memory (`to_empty`) and fills the patch embedding's first 16 input channels
from Wan2.1-T2V (`smart_load_weights`), so only the file gives those parameters their values.

A key the reference's non-strict load would skip without a word (another adapter name, peft's
`base_model.model.` prefix, a layer that is not a target) is refused here, and the whole file is
checked before the model is touched, so a file that does not fit leaves the transformer as it was.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import torch
from torch import nn

from .config import LORA_TARGETS
from .convert_transformer import convert_transformer_key

_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])\.default\.weight")
_BASE_LAYER = ".base_layer."
# our parameters that only OmniAvatar's file gives values to
_FROM_FILE_ONLY = ("patch_embedding.", "audio_injection.")


@dataclasses.dataclass(frozen=True)
class MergeSummary:
    """What `merge_lora_` changed."""

    merged_layers: int
    rank: int | None
    replaced_tensors: int


def is_target(module: str) -> bool:
    """Whether peft wraps the reference module `module` for LORA_TARGETS (its suffix rule)."""
    return any(module == target or module.endswith("." + target) for target in LORA_TARGETS)


def _our_name(key: str, problems: list[str]) -> str | None:
    try:
        return convert_transformer_key(key)
    except KeyError as error:
        problems.append(f"{key}: {error.args[0]}")
        return None


def merge_lora_(model: nn.Module, published: Mapping[str, torch.Tensor], alpha: float) -> MergeSummary:
    """Merge OmniAvatar's file (`published`: its tensors by name) into `model` in place."""
    parameters = dict(model.named_parameters())
    problems: list[str] = []
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    replacements: dict[str, torch.Tensor] = {}
    for key, tensor in published.items():
        match = _LORA_KEY.fullmatch(key)
        if match is not None:
            if not is_target(match["module"]):
                problems.append(f"{key}: {match['module']} is not a LoRA target ({', '.join(LORA_TARGETS)})")
            pairs.setdefault(match["module"], {})[match["part"]] = tensor
            continue
        if "lora_" in key or key.startswith("base_model."):
            problems.append(f"{key}: the reference loads LoRA keys spelled blocks.N.<layer>.lora_A.default.weight")
            continue
        name = _our_name(key.replace(_BASE_LAYER, "."), problems)
        if name is None:
            continue
        if name not in parameters:
            problems.append(f"{key}: the transformer has no {name}")
        elif tuple(parameters[name].shape) != tuple(tensor.shape):
            ours = tuple(parameters[name].shape)
            problems.append(f"{key}: shape {tuple(tensor.shape)}, the transformer's {name} is {ours}")
        else:
            replacements[name] = tensor

    merges: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
    ranks = set()
    for module, parts in sorted(pairs.items()):
        if set(parts) != {"A", "B"}:
            problems.append(f"{module}: lora_{next(iter(parts))} without its other half")
            continue
        name = _our_name(f"{module}.weight", problems)
        if name is None or name not in parameters:
            continue
        down, up, weight = parts["A"], parts["B"], parameters[name]
        if down.ndim != 2 or up.ndim != 2 or (up.shape[0], down.shape[1]) != tuple(weight.shape) or (
            up.shape[1] != down.shape[0]
        ):
            problems.append(
                f"{module}: lora_A {tuple(down.shape)} and lora_B {tuple(up.shape)} do not fit its weight "
                f"{tuple(weight.shape)}"
            )
            continue
        ranks.add(down.shape[0])
        merges.append((weight, down, up))
    if len(ranks) > 1:
        problems.append(f"the file mixes LoRA ranks {sorted(ranks)}")
    absent = [name for name in parameters if name.startswith(_FROM_FILE_ONLY) and name not in replacements]
    if absent:
        problems.append(
            f"it lacks {len(absent)} tensors only it can give, the patch embedding's and the audio modules' "
            f"(such as {absent[0]}): is it OmniAvatar's pytorch_model.pt?"
        )
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ValueError(f"the OmniAvatar file does not fit this transformer: {shown}")

    with torch.no_grad():
        # replaced first: the file's base_layer weights are what its LoRA was trained on
        for name, tensor in replacements.items():
            parameters[name].copy_(tensor)
        for weight, down, up in merges:
            delta = (alpha / down.shape[0]) * (up.to(weight.device).float() @ down.to(weight.device).float())
            weight.copy_((weight.float() + delta).to(weight.dtype))
    return MergeSummary(len(merges), next(iter(ranks)) if ranks else None, len(replacements))
