"""Streaming official checkpoint files into modules, one tensor at a time.

A module is built with its parameters on the meta device (no memory, no initialisation work);
each tensor is then read from a memory-mapped file, renamed, cast and moved to the target device
on its own, so host memory never holds more than one converted tensor beyond the model itself.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from .config import TRANSFORMER_CONFIG_FILE

NamedTensors = Iterable[tuple[str, torch.Tensor]]


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Build modules with meta parameters but real buffers.

    Buffers are usually small and computed in `__init__` (rotary tables, ...); they are not in
    the checkpoints, so they must keep their values. Parameters are created, moved to meta
    before any initialiser touches them, and later replaced by the checkpoint's tensors.
    """

    def on_meta(module: nn.Module, name: str, param: nn.Parameter) -> nn.Parameter | None:
        # an already-meta parameter is being shared (tied weights): keep it the same object
        if param.is_meta:
            return None
        return nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    # torch's stub types the hook as returning None, but register_parameter stores the parameter a
    # hook returns, as torch's docs say
    handle = register_module_parameter_registration_hook(on_meta)  # type: ignore[arg-type]
    try:
        yield
    finally:
        handle.remove()


def read_pth(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a `torch.save` file, memory-mapped rather than read into RAM."""
    state_dict = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    yield from state_dict.items()


def read_safetensors(folder: Path, weights_name: str) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of `folder/weights_name` or of its shards (`weights_name + ".index.json"`),
    one at a time, in file order."""
    index_file = folder / f"{weights_name}.index.json"
    if index_file.exists():
        weight_map: dict[str, str] = json.loads(index_file.read_text())["weight_map"]
        files = [folder / shard for shard in sorted(set(weight_map.values()))]
    else:
        files = [folder / weights_name]
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as reader:
            for key in reader.keys():
                yield key, reader.get_tensor(key)


def load_streamed(
    model: nn.Module,
    tensors: NamedTensors,
    rename: Callable[[str], str],  # may raise KeyError for a name it does not know
    device: torch.device | str,
    dtype: torch.dtype,
) -> None:
    """Fill `model` (built under `parameters_on_meta`) from `tensors` named as in the file.

    Floating-point tensors are cast to `dtype`. Buffers are moved to `device` as they are.
    Raises ValueError naming the keys when the file and the model do not match exactly.
    """
    expected = dict(model.state_dict(keep_vars=True))
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file_key, tensor in tensors:
        try:
            key = rename(file_key)
        except KeyError:
            key = None
        if key not in expected:
            unexpected.append(file_key)
            continue
        target_dtype = dtype if tensor.is_floating_point() else tensor.dtype
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"{file_key}: shape {tuple(tensor.shape)} in the checkpoint, "
                f"{tuple(expected[key].shape)} in the model"
            )
        loaded[key] = tensor.to(device=device, dtype=target_dtype)
    _add_tied_parameters(model, loaded)
    missing = [key for key, value in expected.items() if key not in loaded and value.is_meta]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match {type(model).__name__}: "
            f"missing {sorted(missing)[:10]} ({len(missing)} in all), "
            f"unexpected {sorted(unexpected)[:10]} ({len(unexpected)} in all)"
        )
    model.load_state_dict(loaded, strict=False, assign=True)
    model.to(device)
    model.eval().requires_grad_(False)


def _add_tied_parameters(model: nn.Module, loaded: dict[str, torch.Tensor]) -> None:
    """Give every name of a shared parameter the tensor that was loaded under one of its names."""
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    for names in names_of.values():
        source = next((name for name in names if name in loaded), None)
        if source is not None:
            for name in names:
                loaded.setdefault(name, loaded[source])


def transformer_width(folder: Path) -> int:
    """A Wan transformer's width from its config in `folder`, in the official layout or diffusers'
    (0 if neither)."""
    official = folder / TRANSFORMER_CONFIG_FILE
    if official.is_file():
        return int(json.loads(official.read_text()).get("dim", 0))
    ours = folder / "transformer" / "config.json"
    if ours.is_file():
        config = json.loads(ours.read_text())
        return int(config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0))
    return 0


def write_safetensors_shards(
    tensors: list[tuple[str, torch.Tensor]], folder: Path, weights_name: str, shards: int
) -> list[Path]:
    """`tensors` as `shards` safetensors files of about equal size in `folder`, and their index.

    The files are named as huggingface_hub names a sharded `weights_name` (`STEM-00001-of-00003.safetensors`,
    index `weights_name + ".index.json"`), which read_safetensors reads back; each tensor keeps its
    name, dtype and values. One shard's tensors are in memory at a time (read_pth's stay
    memory-mapped until their shard is written), and the index is written last, so a conversion
    that died leaves no index. Raises ValueError when a tensor is so large that a shard would be empty.
    """
    sizes = [tensor.numel() * tensor.element_size() for _, tensor in tensors]
    total = sum(sizes)
    stem = weights_name.removesuffix(".safetensors")
    names = [f"{stem}-{number:05d}-of-{shards:05d}.safetensors" for number in range(1, shards + 1)]
    # each tensor goes to the shard its first byte falls in, so every shard ends at most one
    # tensor past total / shards
    placement: list[list[tuple[str, torch.Tensor]]] = [[] for _ in names]
    start = 0
    for (key, tensor), size in zip(tensors, sizes, strict=True):
        placement[min(shards - 1, start * shards // max(total, 1))].append((key, tensor))
        start += size
    if any(not shard for shard in placement):
        raise ValueError(f"{len(tensors)} tensors of {total} bytes do not fill {shards} shards")
    weight_map: dict[str, str] = {}
    files = []
    for name, shard in zip(names, placement, strict=True):
        save_file({key: tensor.contiguous() for key, tensor in shard}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key, _ in shard})
        files.append(folder / name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{weights_name}.index.json").write_text(json.dumps(index, indent=2))
    return files
