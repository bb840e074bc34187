"""A LoRA attached beside a loaded Wan transformer's weights, applied only while a job needs it.

Why an adapter and not a merge: one worker serves jobs with and without the LoRA from one set of
weights, job by job; merging would take a second copy of the transformer or leave the worker
unable to run jobs without it. So each targeted linear keeps its weight W and gets two buffers, A
(`lora_down`) and (alpha / rank) * B (`lora_up`), and a forward hook that, only inside
`LoraAdapter.active()`, adds `up(down(x))` to its output. Outside, the hook returns at once and
every output is the base one, bit for bit. While active, a targeted linear costs r * (in + out)
more multiply-adds per token, and its output exists twice for a moment.

The buffers are registered on the linear modules before a memory mode places the transformer, so
`.to()`, the fp8 mode's `transformer.to(gpu)` and diffusers' group offloading move them with their
layer (the fp8 mode swaps the weights, which the hook never reads).

Files are peft's, trained on the official model, so they name the official modules:

    [base_model.model.]blocks.3.self_attn.q.lora_A[.default].weight   A: [rank, in_features]
    [base_model.model.]blocks.3.self_attn.q.lora_B[.default].weight   B: [out_features, rank]

and the model's `LoraFormat` maps an official parameter name to ours (its checkpoint-key mapper).
(The official loaders' non-strict load only fills keys that carry the adapter name `.default`;
both spellings are taken here.)

Any other tensor replaces the base parameter of that name (`...q.base_layer.weight` is peft's
name for the weight of a layer it wraps), as a non-strict `load_state_dict` before merging does.
Such a tensor is kept as a buffer beside the base one and swapped into the parameter only while
active; `active()` refuses where a memory mode has taken the parameter over (a weight the fp8 mode
quantised, or any under group offloading, which restores its own copies).

The official code merges with peft (W + (alpha / rank) * B @ A, in the weight's dtype); the adapter
adds the same product to the output instead, so the two agree in their outputs, up to rounding,
not in their weights.

The whole file is checked before the model is touched, so a file that does not fit leaves the
transformer as it was. Tensors are read one at a time from the memory-mapped file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.utils.hooks import RemovableHandle

log = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."
# peft wraps each target layer and moves its original parameters under `base_layer`.
_PEFT_BASE_LAYER = ".base_layer."
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])(?:\.default)?\.weight")
_ATTACHABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Buffer names on the targeted modules.
_DOWN, _UP = "lora_down", "lora_up"
_REPLACEMENT = "lora_replacement_"  # + the parameter's attribute name ("weight", "bias")


@dataclasses.dataclass(frozen=True)
class LoraFormat:
    """How a model's LoRA files name its parameters, and what a refusal says instead."""

    #: our name of an official parameter name; raises KeyError for a name the model does not have
    to_parameter: Callable[[str], str]
    #: the model, as refusals name it ("Wan2.2-S2V-14B")
    model: str
    #: a file that fits, as refusals suggest it ("liveavatar.safetensors of Quark-Vision/Live-Avatar")
    example: str


@dataclasses.dataclass(frozen=True)
class LoraSummary:
    """What `LoraAdapter.attach` attached."""

    layers: int  # linears with an A/B pair
    rank: int | None  # None when the file has no A/B pairs
    replaced_tensors: int  # parameters the file replaces while active


@dataclasses.dataclass(frozen=True)
class _LoraPair:
    parameter: str  # our name of the weight of the linear the pair adapts
    a_key: str
    b_key: str
    rank: int


@dataclasses.dataclass(frozen=True)
class _Replacement:
    name: str  # ours, for messages
    module: nn.Module
    attribute: str  # the parameter's name on `module`
    parameter: nn.Parameter  # the parameter as it was at attach time


class LoraAdapter:
    """A LoRA attached to a transformer, applied only inside `active()`."""

    def __init__(self, transformer: nn.Module, path: Path, summary: LoraSummary) -> None:
        """Use `attach`."""
        self.path = path
        self.summary = summary
        self._transformer = transformer
        self._hooks: list[RemovableHandle] = []
        self._adapted: list[nn.Linear] = []
        self._replacements: list[_Replacement] = []
        self._active = False
        self._attached = True

    @classmethod
    def attach(cls, transformer: nn.Module, path: Path, alpha: float, lora_format: LoraFormat) -> LoraAdapter:
        """Attach the LoRA file at `path`, in the model's `lora_format`, to `transformer`, inactive.

        Call it right after loading, on real tensors (CPU or GPU, float32 or bfloat16), and before
        a memory mode quantises or offloads the transformer, so that the buffers are placed with
        their layers.

        Raises ValueError naming the file and the key when a key maps to no parameter (or a pair to
        no linear layer), when a shape does not fit, when an A has no B (or a B no A), when ranks
        differ, or when the weight it adapts holds no values; and ValueError when the transformer
        is already offloaded or already has a LoRA attached. The transformer is unchanged then.
        """
        if any(hasattr(module, "_diffusers_hook") for module in transformer.modules()):
            raise ValueError(
                f"cannot attach the LoRA {path}: the transformer is already offloaded (it has diffusers "
                "hooks); attach right after the weights are loaded, before a memory mode places them"
            )
        parameters = dict(transformer.named_parameters())
        modules = dict(transformer.named_modules())
        with safe_open(path, framework="pt", device="cpu") as reader:
            file = _LoraFile(path, lora_format)
            pairs, replacements = _plan(file, reader, parameters)
            for pair in pairs:
                linear = modules[_module_name(pair.parameter)]
                if not isinstance(linear, nn.Linear):
                    raise file.error(
                        pair.a_key, f"is for {pair.parameter}, which is not the weight of a linear layer"
                    )
            targets = [pair.parameter for pair in pairs] + list(replacements.values())
            for name in map(_module_name, targets):
                if any(buffer.startswith("lora_") for buffer in modules[name]._buffers):
                    raise ValueError(f"cannot attach the LoRA {path}: {name} already has a LoRA attached")

            summary = LoraSummary(
                layers=len(pairs), rank=pairs[0].rank if pairs else None, replaced_tensors=len(replacements)
            )
            adapter = cls(transformer, path, summary)
            try:
                with torch.no_grad():
                    for pair in pairs:
                        adapter._adapt(modules[_module_name(pair.parameter)], reader, pair, alpha)
                    for key, name in replacements.items():
                        adapter._keep_replacement(name, modules[_module_name(name)], reader, key)
            except BaseException:
                adapter.detach()
                raise
        buffer_bytes = sum(
            getattr(linear, name).nbytes for linear in adapter._adapted for name in (_DOWN, _UP)
        )
        log.info(
            "attached the LoRA %s: %d layers at rank %s, alpha %g, %d tensors replaced while active; "
            "A/B buffers %.2f GiB",
            path.name, summary.layers, summary.rank, alpha, summary.replaced_tensors, buffer_bytes / 2**30,
        )
        return adapter

    @property
    def is_active(self) -> bool:
        return self._active

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Apply the LoRA inside the block; the base weights again on leaving it, however it is left
        (an exception, or a generator suspended inside it being closed). Not re-entrant."""
        if not self._attached:
            raise RuntimeError(f"the LoRA {self.path} was detached")
        if self._active:
            raise RuntimeError(f"the LoRA {self.path} is already active (active() is not re-entrant)")
        self._check_replacements()
        self._swap_replacements()
        self._active = True
        try:
            yield
        finally:
            self._active = False
            self._swap_replacements()

    def detach(self) -> None:
        """Remove the hooks and buffers; the transformer is as it was before `attach`."""
        if self._active:
            raise RuntimeError(f"cannot detach the LoRA {self.path} while it is active")
        for hook in self._hooks:
            hook.remove()
        for linear in self._adapted:
            for name in (_DOWN, _UP):
                linear._buffers.pop(name, None)
        for replacement in self._replacements:
            replacement.module._buffers.pop(_REPLACEMENT + replacement.attribute, None)
        self._hooks, self._adapted, self._replacements = [], [], []
        self._attached = False

    def _adapt(self, linear: nn.Linear, reader: safe_open, pair: _LoraPair, alpha: float) -> None:
        weight = linear.weight
        a = reader.get_tensor(pair.a_key).to(device=weight.device, dtype=weight.dtype)
        # alpha / rank is folded into B in float32, so that the low-precision B is rounded once
        b = reader.get_tensor(pair.b_key).to(device=weight.device, dtype=torch.float32)
        up = b.mul_(alpha / pair.rank).to(weight.dtype)
        self._adapted.append(linear)
        linear.register_buffer(_DOWN, a, persistent=False)
        linear.register_buffer(_UP, up, persistent=False)
        self._hooks.append(linear.register_forward_hook(self._add_update))

    def _add_update(
        self, linear: nn.Linear, args: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> torch.Tensor | None:
        if not self._active:
            return None
        down, up = cast(torch.Tensor, linear.lora_down), cast(torch.Tensor, linear.lora_up)
        return output + F.linear(F.linear(args[0], down), up)

    def _keep_replacement(self, name: str, module: nn.Module, reader: safe_open, key: str) -> None:
        attribute = name.rpartition(".")[2]
        parameter = module.get_parameter(attribute)
        tensor = reader.get_tensor(key).to(device=parameter.device, dtype=parameter.dtype)
        self._replacements.append(_Replacement(name, module, attribute, parameter))
        module.register_buffer(_REPLACEMENT + attribute, tensor, persistent=False)

    def _check_replacements(self) -> None:
        """Refuse, before changing anything, to swap tensors where a memory mode manages them."""
        if not self._replacements:
            return
        if any(hasattr(module, "_diffusers_hook") for module in self._transformer.modules()):
            raise RuntimeError(
                f"the LoRA {self.path} replaces {self._replacements[0].name}, which cannot be swapped under "
                "group offloading (it restores its own copies of the parameters)"
            )
        for replacement in self._replacements:
            current = replacement.module._parameters.get(replacement.attribute)
            kept = replacement.module.get_buffer(_REPLACEMENT + replacement.attribute)
            if current is not replacement.parameter or replacement.parameter.shape != kept.shape:
                raise RuntimeError(
                    f"the LoRA {self.path} replaces {replacement.name}, which a memory mode has since taken "
                    "over (quantised); such a tensor cannot be swapped"
                )

    def _swap_replacements(self) -> None:
        """Exchange each parameter's data with the tensor kept beside it (activating and restoring alike)."""
        for replacement in self._replacements:
            name = _REPLACEMENT + replacement.attribute
            kept = replacement.module.get_buffer(name)
            replacement.module._buffers[name] = replacement.parameter.data
            replacement.parameter.data = kept


def _module_name(parameter: str) -> str:
    return parameter.rpartition(".")[0]


def _plan(
    file: _LoraFile, reader: safe_open, parameters: dict[str, nn.Parameter]
) -> tuple[list[_LoraPair], dict[str, str]]:
    """The pairs to attach and the tensors to replace ({file key: our name}), all checked."""
    halves: dict[str, dict[str, str]] = {}
    replacements: dict[str, str] = {}
    for key in reader.keys():
        official = _official_name(key)
        match = _LORA_KEY.fullmatch(official)
        if match:
            parts = halves.setdefault(match["module"], {})
            if match["part"] in parts:
                first = parts[match["part"]]
                raise file.error(key, f"is a second LoRA {match['part']} matrix of {match['module']} ({first})")
            parts[match["part"]] = key
            continue
        name = _our_parameter(file, key, official, parameters)
        if name in replacements.values():
            first = next(file_key for file_key, replaced in replacements.items() if replaced == name)
            raise file.error(key, f"replaces {name}, which {first} replaces already")
        shape = tuple(reader.get_slice(key).get_shape())
        if shape != tuple(parameters[name].shape):
            raise file.error(key, f"has shape {shape} but {name} has {tuple(parameters[name].shape)}")
        replacements[key] = name

    pairs: list[_LoraPair] = []
    for module, parts in halves.items():
        for part, other in (("A", "B"), ("B", "A")):
            if other not in parts:
                missing = f"{module}.lora_{other}.weight"
                raise file.error(parts[part], f"is a LoRA {part} matrix without its {other} ({missing})")
        a_key, b_key = parts["A"], parts["B"]
        name = _our_parameter(file, a_key, f"{module}.weight", parameters)
        a_shape = tuple(reader.get_slice(a_key).get_shape())
        b_shape = tuple(reader.get_slice(b_key).get_shape())
        weight_shape = tuple(parameters[name].shape)
        fits = len(a_shape) == 2 and len(b_shape) == 2 and b_shape[1] == a_shape[0]
        if not fits or (b_shape[0], a_shape[1]) != weight_shape:
            raise file.error(
                a_key,
                f"and {b_key} have shapes {a_shape} and {b_shape}, which do not make an update of "
                f"{name} {weight_shape} (A is [rank, in], B is [out, rank])",
            )
        if pairs and a_shape[0] != pairs[0].rank:
            raise file.error(a_key, f"has rank {a_shape[0]} but {pairs[0].a_key} has rank {pairs[0].rank}")
        pairs.append(_LoraPair(parameter=name, a_key=a_key, b_key=b_key, rank=a_shape[0]))

    return pairs, replacements


def _official_name(key: str) -> str:
    """The official name behind a file key: without peft's model prefix and base-layer wrapper."""
    return key.removeprefix(_PEFT_PREFIX).replace(_PEFT_BASE_LAYER, ".")


def _our_parameter(file: _LoraFile, key: str, official: str, parameters: dict[str, nn.Parameter]) -> str:
    """Our name of the parameter an official name stands for, checked to be there and loaded."""
    try:
        name = file.lora_format.to_parameter(official)
    except KeyError:
        raise file.error(
            key, f"names no parameter of the official {file.lora_format.model} transformer ({official})"
        ) from None
    if name not in parameters:
        raise file.error(key, f"is for {name}, which this transformer does not have")
    weight = parameters[name]
    if weight.is_meta or weight.numel() == 0 or weight.dtype not in _ATTACHABLE_DTYPES:
        state = "on the meta device" if weight.is_meta else f"{weight.dtype}, shape {tuple(weight.shape)}"
        raise ValueError(
            f"cannot attach the LoRA {file.path} to {name} ({state}): attach right after the weights are "
            "loaded, before a memory mode quantises or offloads the transformer"
        )
    return name


@dataclasses.dataclass(frozen=True)
class _LoraFile:
    path: Path
    lora_format: LoraFormat

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(
            f"LoRA file {self.path}: {key} {problem}; the file must be a LoRA for {self.lora_format.model} under "
            f"the official module names, such as {self.lora_format.example}: replace it with that one"
        )
