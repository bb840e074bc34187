"""The fast mode's step-distillation LoRA (lightx2v's, as the README links it), on the shared adapter.

One worker serves both modes job by job, so the LoRA is attached beside the weights and active
only while a fast job runs (model/wan_common/lora.py), as wan-s2v's is.

The file is ComfyUI's spelling of a Wan2.1 LoRA, which the reference's `WanLoraWrapper`
(`wan/wan_lora.py`) merges as it reads it: for every `diffusion_model.<name>.lora_down.weight`
(A, [rank, in]) and its `lora_up.weight` (B, [out, rank]) it adds scale * B @ A to <name>.weight
(no alpha / rank: any `.alpha` key is not read), and for every `diffusion_model.<name>.diff` or
`.diff_b` it adds scale * the tensor to <name>.weight or .bias. Keys without the prefix, or
ending otherwise (`.alpha`, `.diff_m`), it skips. Here the pairs become the adapter's A and B
(alpha = rank * scale makes its alpha / rank the reference's scale), and each non-zero diff a
replacement tensor, base + scale * diff, swapped in while active. The translated file is written
to a temporary folder, read by the adapter and deleted.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from model.base import ModelUnavailableError
from model.wan_common.lora import LoraAdapter, LoraFormat

from .config import FAST_LORA_SCALE
from .convert_transformer import convert_transformer_key
from .declaration import LORA_FILE, LORA_REPO_ID

log = logging.getLogger(__name__)

PREFIX = "diffusion_model."
_PAIR_PARTS = {".lora_down.weight": ".lora_A.weight", ".lora_up.weight": ".lora_B.weight"}
_DIFFS = {".diff_b": ".bias", ".diff": ".weight"}

LIGHTX2V_LORA = LoraFormat(
    to_parameter=convert_transformer_key, model="Wan2.1-I2V-14B (InfiniteTalk)",
    example=f"{LORA_FILE} of {LORA_REPO_ID}",
)


def translate(path: Path, transformer: nn.Module, scale: float, target: Path) -> int | None:
    """Write `path`'s LoRA to `target` in the adapter's spelling, with each diff folded into a
    replacement tensor; the rank of its pairs (None: it has none). Raises ValueError for a diff
    naming no parameter of `transformer` or not of its shape."""
    parameters = dict(transformer.named_parameters())
    translated: dict[str, torch.Tensor] = {}
    skipped = 0
    rank = None
    with safe_open(path, framework="pt", device="cpu") as reader:
        for key in reader.keys():
            name = key.removeprefix(PREFIX)
            part = next((suffix for suffix in (*_PAIR_PARTS, *_DIFFS) if name.endswith(suffix)), None)
            if not key.startswith(PREFIX) or part is None:
                skipped += 1
                continue
            module = name.removesuffix(part)
            if part in _PAIR_PARTS:
                tensor = reader.get_tensor(key)
                if part == ".lora_down.weight" and rank is None:
                    rank = tensor.shape[0]
                translated[module + _PAIR_PARTS[part]] = tensor
                continue
            diff = reader.get_tensor(key)
            if not diff.any():  # ComfyUI's files carry zero diffs for the norms: nothing to swap
                continue
            official = module + _DIFFS[part]
            try:
                ours = convert_transformer_key(official)
            except KeyError:
                raise ValueError(f"{key} names no parameter of the InfiniteTalk transformer ({official})") from None
            base = parameters.get(ours)
            if base is None or tuple(base.shape) != tuple(diff.shape):
                shape = None if base is None else tuple(base.shape)
                raise ValueError(f"{key} has shape {tuple(diff.shape)}, but {ours} has {shape}")
            translated[official] = (base.detach().float().cpu() + scale * diff.float()).to(base.dtype)
    if skipped:
        log.info("the LoRA %s: %d keys the reference does not read either were skipped", path.name, skipped)
    save_file(translated, str(target))
    return rank


def attach_lightx2v_lora(
    transformer: nn.Module, path: Path, scale: float = FAST_LORA_SCALE
) -> LoraAdapter | ModelUnavailableError:
    """The fast mode's LoRA at `path` attached to `transformer` (inactive), or why the fast mode is
    unavailable (a file that cannot be read or does not fit leaves the transformer as it was)."""
    try:
        with tempfile.TemporaryDirectory(prefix="infinitetalk-lora-") as folder:
            translated = Path(folder) / path.name
            rank = translate(path, transformer, scale, translated)
            adapter = LoraAdapter.attach(transformer, translated, (rank or 1) * scale, LIGHTX2V_LORA)
        adapter.path = path  # messages name the file the worker found, not the temporary one
        return adapter
    except (SafetensorError, OSError) as error:
        problem = f"it is not a readable safetensors file ({type(error).__name__}: {error})"
    except ValueError as error:
        problem = str(error)
    log.warning("mode 'fast' is unavailable: the LoRA %s does not fit: %s", path, problem)
    return ModelUnavailableError(
        f"the step-distillation LoRA of the fast mode at {path} does not fit the model: {problem}. Replace it with "
        f"{LORA_FILE} of {LORA_REPO_ID} (delete it and the worker downloads it again at its next start); quality "
        "jobs are unaffected"
    )
