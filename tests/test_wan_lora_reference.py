"""Our expectation of the Live Avatar LoRA (model/wan_s2v/lora.py) against Live Avatar's own loader.

Every fact comes from the checkout at test time (LIVEAVATAR_REFERENCE_REPO; skipped without it):
the rank, alpha and target modules from the training config its single-GPU launch script passes
(read by its own `parse_args_for_training_config`), and the LoRA parameters from its own
`add_lora_to_model` (liveavatar/models/wan/causal_s2v_pipeline.py) run over its causal model. Files
we accept it then loads whole, and the keys we refuse it skips.
"""

from __future__ import annotations

import contextlib
import io
import re
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.wan_s2v.config import LORA_ALPHA
from model.wan_s2v.lora import LIVE_AVATAR_EXPECTATION, LIVE_AVATAR_LORA, LORA_RANK, live_avatar_targets
from tests.liveavatar_reference import (
    LIVEAVATAR_TEST_MARKS,
    liveavatar_module,
    liveavatar_root,
    reference_causal_model,
)
from tests.wan_tiny_models import (
    official_transformer_state_dict,
    tiny_live_avatar_lora,
    tiny_transformer_from_official_config,
)

pytestmark = LIVEAVATAR_TEST_MARKS

LAUNCH_SCRIPT = "infinite_inference_single_gpu.sh"
# what `add_lora_to_model` prints after its non-strict load
LOADED = re.compile(r"(\d+) parameters are loaded from .*?\. (\d+) parameters are unexpected\.")


@pytest.fixture(autouse=True)
def _pinned_threads(one_cpu_thread):
    pass


@pytest.fixture(scope="module")
def settings() -> dict:
    """The training config the launch script names, as the reference reads it."""
    root = liveavatar_root()
    script = (root / LAUNCH_SCRIPT).read_text()
    assert "--load_lora" in script, f"{LAUNCH_SCRIPT} no longer loads a LoRA"
    config = re.search(r"--training_config\s+(\S+)", script)
    assert config, f"{LAUNCH_SCRIPT} names no --training_config"
    parse = liveavatar_module("utils.args_config").parse_args_for_training_config
    return parse(str(root / config[1]))


@pytest.fixture(scope="module")
def ours():
    return tiny_transformer_from_official_config(seed=0)


def add_lora(ours, settings: dict, path: Path | None = None) -> tuple[torch.nn.Module, tuple[int, int] | None]:
    """The reference's `add_lora_to_model` over its causal model with `ours`'s weights, as the
    launch runs it: the peft model (no `path`), or the merged model after loading the file at
    `path`, with the (loaded, unexpected) counts it prints."""
    pipeline = liveavatar_module("models.wan.causal_s2v_pipeline")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        model = pipeline.WanS2V.add_lora_to_model(
            types.SimpleNamespace(), reference_causal_model(ours),
            lora_rank=settings["lora_rank"], lora_alpha=settings["lora_alpha"],
            lora_target_modules=settings["lora_target_modules"], init_lora_weights=settings["init_lora_weights"],
            pretrained_lora_path=None if path is None else str(path),
        )
    counts = LOADED.search(printed.getvalue())
    if path is not None:
        assert counts, printed.getvalue()
    return model, None if counts is None else (int(counts[1]), int(counts[2]))


def test_our_rank_and_alpha_are_those_of_the_config_the_launch_script_loads(settings):
    assert LORA_RANK == LIVE_AVATAR_EXPECTATION.rank == settings["lora_rank"]
    assert LORA_ALPHA == settings["lora_alpha"]


def test_the_references_peft_model_has_exactly_the_lora_parameters_we_expect(ours, settings):
    peft_model, _ = add_lora(ours, settings)
    reference = {name: tuple(tensor.shape) for name, tensor in peft_model.state_dict().items() if ".lora_" in name}
    parameters = dict(ours.named_parameters())
    expected = {}
    for target in live_avatar_targets(ours):
        out_features, in_features = parameters[LIVE_AVATAR_LORA.to_parameter(f"{target}.weight")].shape
        stem = f"base_model.model.{target}"
        adapter = LIVE_AVATAR_EXPECTATION.adapter_name
        expected[f"{stem}.lora_A.{adapter}.weight"] = (LIVE_AVATAR_EXPECTATION.rank, in_features)
        expected[f"{stem}.lora_B.{adapter}.weight"] = (out_features, LIVE_AVATAR_EXPECTATION.rank)
    assert reference == expected


def _weights_changed(merged: torch.nn.Module, ours) -> set[str]:
    base = official_transformer_state_dict(ours)
    return {
        name.removesuffix(".weight") for name, tensor in merged.state_dict().items()
        if name in base and not torch.equal(tensor, base[name])
    }


@pytest.mark.parametrize("prefix", ["", "base_model.model."])
def test_the_reference_loads_a_file_we_accept_whole(ours, settings, tmp_path, prefix):
    tensors = tiny_live_avatar_lora(official_transformer_state_dict(ours), rank=settings["lora_rank"], prefix=prefix)
    path = tmp_path / "liveavatar.safetensors"
    save_file(tensors, str(path))
    assert LIVE_AVATAR_EXPECTATION.problems(path, ours, LIVE_AVATAR_LORA) == []
    merged, (_, unexpected) = add_lora(ours, settings, path)
    assert unexpected == 0
    # every targeted layer took its update (peft's B starts at zero: a skipped pair changes nothing)
    assert _weights_changed(merged, ours) == set(live_avatar_targets(ours))


MISSPELT = {
    "without peft's adapter name": lambda tensors: {
        key.replace(".default.weight", ".weight"): value for key, value in tensors.items()
    },
    "the model prefix on some keys only": lambda tensors: {
        ("base_model.model." + key if ".self_attn." in key else key): value for key, value in tensors.items()
    },
}


@pytest.mark.parametrize("kind", list(MISSPELT))
def test_keys_we_refuse_are_keys_the_reference_skips(ours, settings, tmp_path, kind):
    good = tiny_live_avatar_lora(official_transformer_state_dict(ours), rank=settings["lora_rank"])
    path = tmp_path / "liveavatar.safetensors"
    save_file(MISSPELT[kind](good), str(path))
    assert LIVE_AVATAR_EXPECTATION.problems(path, ours, LIVE_AVATAR_LORA) != []
    merged, (_, unexpected) = add_lora(ours, settings, path)
    assert unexpected > 0
    assert _weights_changed(merged, ours) != set(live_avatar_targets(ours))
