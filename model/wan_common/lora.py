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

`attach` takes any file that fits the transformer. A model whose published LoRA is known declares
a `LoraExpectation` (the layers it adapts, its rank, peft's adapter name in its keys) and checks a
file against it first: `LoraExpectation.problems` lists what differs, from the file's header alone.
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
# any adapter name, or none, for telling a file's spelling from the expected one
_ANY_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<part>[AB])(?:\.(?P<adapter>[^.]+))?\.weight")
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
class LoraExpectation:
    """The one LoRA file a model's reference loads whole, as peft's `load_state_dict` over its model takes it.

    peft wraps each targeted layer, so the reference's model has exactly these LoRA parameters:
    `[base_model.model.]{target}.lora_A.{adapter_name}.weight` ([rank, in]) and `...lora_B...`
    ([out, rank]) for every target, the wrapped layer's own weight as `{target}.base_layer.weight`,
    and every other parameter under its plain name. A non-strict load skips any other key without a
    word, and the reference adds the model prefix to all keys or none, as the first key says.
    """

    #: the official names of the modules the file adapts, for a transformer of this shape
    targets: Callable[[nn.Module], tuple[str, ...]]
    rank: int
    #: peft's adapter name, which the reference's model carries in every LoRA parameter's name
    adapter_name: str = "default"

    def problems(self, path: Path, transformer: nn.Module, lora_format: LoraFormat) -> list[str]:
        """What in the file at `path` differs from this expectation for `transformer`, a sentence per
        kind of difference naming the layers or keys (empty: the file is the expected one). Reads the
        file's header only; raises what safetensors raises for a file that is not one."""
        targets = self.targets(transformer)
        wanted = set(targets)
        parameters = dict(transformer.named_parameters())
        with safe_open(path, framework="pt", device="cpu") as reader:
            keys = list(reader.keys())
            shapes = {key: tuple(reader.get_slice(key).get_shape()) for key in keys}
        problems: list[str] = []  # the file's spelling first: a misspelt file lacks every layer too
        if not keys:
            problems.append("the file holds no tensors")
        prefixed = [key for key in keys if key.startswith(_PEFT_PREFIX)]
        if prefixed and len(prefixed) < len(keys):
            plain = next(key for key in keys if not key.startswith(_PEFT_PREFIX))
            problems.append(
                f"{len(prefixed)} of its {len(keys)} keys carry peft's model prefix {_PEFT_PREFIX!r} and the "
                f"others not ({prefixed[0]}, {plain}); the reference prefixes all keys or none, as the first says"
            )
        found: dict[str, dict[str, tuple[int, ...]]] = {}
        misspelt, untargeted, unexpected = [], [], []
        for key in keys:
            official = key.removeprefix(_PEFT_PREFIX)
            match = _ANY_LORA_KEY.fullmatch(official)
            if match is None:
                reason = self._unloadable(official, wanted, parameters, lora_format)
                if reason:
                    unexpected.append(f"unexpected key {key} ({reason})")
            elif match["adapter"] != self.adapter_name:
                misspelt.append(key)
            elif match["module"] not in wanted:
                untargeted.append(key)
            else:
                found.setdefault(match["module"], {})[match["part"]] = shapes[key]
        if misspelt:
            problems.append(
                f"LoRA keys the reference does not load, which it spells "
                f"...lora_A.{self.adapter_name}.weight: {_some(misspelt)}"
            )
        if untargeted:
            problems.append(f"LoRA keys of layers the LoRA does not target: {_some(untargeted)}")
        problems.extend(unexpected)

        missing: list[str] = []
        lone: dict[str, list[str]] = {}
        ranks: dict[tuple[int | None, int | None], list[str]] = {}
        for target in targets:
            parts = found.get(target, {})
            if not parts:
                missing.append(target)
            elif len(parts) == 1:
                lone.setdefault(next(iter(parts)), []).append(target)
            else:
                a, b = parts["A"], parts["B"]
                rank = (a[0] if len(a) == 2 else None, b[1] if len(b) == 2 else None)
                if rank != (self.rank, self.rank):
                    ranks.setdefault(rank, []).append(target)
        if missing:
            problems.append(f"{_some(missing)}: no lora_A/lora_B")
        for part, layers in lone.items():
            problems.append(f"{_some(layers)}: lora_{part} without lora_{'B' if part == 'A' else 'A'}")
        for (rank_a, rank_b), layers in ranks.items():
            found_rank = f"{rank_a}" if rank_a == rank_b else f"{rank_a} (lora_A) and {rank_b} (lora_B)"
            problems.append(f"{_some(layers)}: rank {found_rank} where {self.rank} is expected")
        return problems

    def _unloadable(
        self, official: str, wanted: set[str], parameters: dict[str, nn.Parameter], lora_format: LoraFormat
    ) -> str | None:
        """Why the reference's model has no parameter of this (non-LoRA) name, or None."""
        module, _, attribute = official.rpartition(".")
        if _PEFT_BASE_LAYER in f"{module}.":
            wrapped = module.removesuffix(".base_layer")
            if wrapped not in wanted:
                return f"peft wraps only the targeted layers, and {wrapped} is not one"
        elif module in wanted:
            return f"peft names the wrapped layer's {attribute} {module}.base_layer.{attribute}"
        try:
            name = lora_format.to_parameter(official.replace(_PEFT_BASE_LAYER, "."))
        except KeyError:
            return f"names no parameter of the official {lora_format.model} transformer"
        if name not in parameters:
            return f"is for {name}, which this transformer does not have"
        return None


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


def _some(names: list[str], shown: int = 3) -> str:
    """'a, b, c and 5 more', for sentences that name many layers or keys."""
    if len(names) <= shown + 1:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


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
