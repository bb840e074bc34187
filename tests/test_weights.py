"""The generic weights module on specs of its own: what counts as complete, where a pinned revision
is looked for, what the messages say, and the download script's choice of specs.

The Wan2.2-S2V specs, downloads from a fake Hub and the lock between real processes are in
tests/test_wan_weights.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from model import weights
from model.declaration import WeightSpec
from model.registry import BACKENDS, DEFAULT_BACKEND
from model.weights import FINISHED_MARKER_NAME, download_patterns, is_finished, locate, missing, not_found_text

ROOT = Path(__file__).resolve().parent.parent

FOLDER_SPEC = WeightSpec(
    name="Acme weights",
    repo_id="acme/talker",
    folder="Talker",
    size_gb=1,
    required_files=("config.json", "model.index.json"),
    required_folders=("tokenizer",),
    shard_indexes=("model.index.json",),
    any_of=(("audio/model.safetensors", "audio/model.bin"),),
    ignore_patterns=("*.msgpack",),
)
FILE_SPEC = WeightSpec(
    name="Acme LoRA", repo_id="acme/lora", folder="Lora", size_gb=0.1, required_files=("lora.safetensors",),
    optional=True, modes=("turbo",),
)


def write(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    return folder


def complete_copy(folder: Path) -> Path:
    write(folder, "config.json", "tokenizer/spiece.model", "audio/model.bin", "shard-1.safetensors")
    (folder / "model.index.json").write_text(json.dumps({"weight_map": {"a": "shard-1.safetensors"}}))
    return folder


def test_each_kind_of_requirement_is_named_when_it_is_missing(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    assert missing(FOLDER_SPEC, folder) == ["config.json", "model.index.json", "audio/model.safetensors", "tokenizer/"]
    complete_copy(folder)
    assert missing(FOLDER_SPEC, folder) == []
    (folder / "shard-1.safetensors").unlink()
    (folder / "tokenizer" / "spiece.model").unlink()  # an empty folder does not count
    assert missing(FOLDER_SPEC, folder) == ["tokenizer/", "shard-1.safetensors"]
    (folder / "model.index.json").write_text("not json")
    assert missing(FOLDER_SPEC, folder)[-1].startswith("model.index.json (unreadable: ")


def test_an_any_of_group_downloads_the_first_file_the_repository_has():
    listing = ["config.json", "model.index.json", "tokenizer/a", "audio/model.safetensors", "audio/model.bin",
               "audio/flax.msgpack", "README.md"]
    fetched = set(filter_repo_objects(listing, allow_patterns=download_patterns(FOLDER_SPEC, listing),
                                      ignore_patterns=list(FOLDER_SPEC.ignore_patterns)))
    assert fetched == {"config.json", "model.index.json", "tokenizer/a", "audio/model.safetensors"}
    without_safetensors = [name for name in listing if name != "audio/model.safetensors"]
    assert download_patterns(FOLDER_SPEC, without_safetensors)[-1] == "audio/model.bin"
    assert download_patterns(FILE_SPEC, []) == ["lora.safetensors"]


def test_a_pinned_revision_is_looked_for_in_its_own_snapshot_and_by_its_marker(tmp_path):
    pinned = WeightSpec(name="Acme LoRA", repo_id="acme/lora", folder="Lora", size_gb=0.1,
                        required_files=("lora.safetensors",), revision="v2")
    model_dir, cache, image = tmp_path / "models", tmp_path / "hub", tmp_path / "image"
    repo_cache = cache / "models--acme--lora"
    write(repo_cache / "snapshots" / "newer", "lora.safetensors")
    assert locate(FILE_SPEC, model_dir, cache, image) == repo_cache / "snapshots" / "newer"
    assert locate(pinned, model_dir, cache, image) is None
    write(repo_cache / "snapshots" / "c0ffee", "lora.safetensors")
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "v2").write_text("c0ffee\n")
    assert locate(pinned, model_dir, cache, image) == repo_cache / "snapshots" / "c0ffee"

    downloaded = write(model_dir / "Lora", "lora.safetensors")
    (downloaded / FINISHED_MARKER_NAME).write_text(json.dumps({"revision": "v1"}))
    assert not is_finished(pinned, downloaded) and is_finished(FILE_SPEC, downloaded)
    (downloaded / FINISHED_MARKER_NAME).write_text(json.dumps({"revision": "v2"}))
    assert is_finished(pinned, downloaded)


def test_messages_name_a_one_file_spec_by_its_files_and_a_folder_spec_by_its_folders(tmp_path):
    folders = [tmp_path / "a", tmp_path / "b"]
    assert not_found_text(FILE_SPEC, folders) == (
        f"the Acme LoRA of the turbo mode was not found (looked at {folders[0] / 'lora.safetensors'}, "
        f"{folders[1] / 'lora.safetensors'})"
    )
    assert not_found_text(FOLDER_SPEC, folders) == (
        f"the Acme weights were not found (looked in {folders[0]}, {folders[1]})"
    )
    advice = weights.download_failed_text(FOLDER_SPEC, tmp_path / "a", "OSError: full")
    assert "acme/talker" in advice and "RunPod's model cache" in advice and "HF_TOKEN" in advice
    # RunPod caches one model per endpoint: optional weights are never the one to suggest
    assert "RunPod's model cache" not in weights.download_failed_text(FILE_SPEC, tmp_path / "a", "OSError: full")


def test_weights_present_is_what_the_registry_asks(tmp_path):
    spec = FOLDER_SPEC
    assert not weights.weights_present(spec, tmp_path)
    complete_copy(tmp_path / spec.folder)
    assert not weights.weights_present(spec, tmp_path)  # a download folder counts once finished
    (tmp_path / spec.folder / FINISHED_MARKER_NAME).write_text("{}")
    assert weights.weights_present(spec, tmp_path)


def test_the_module_imports_without_torch():
    code = "import sys, model.weights; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_download_script_fetches_the_deployed_backends_specs_unless_told_otherwise():
    from model.declaration import SettingValueError
    from scripts.download_models import chosen_specs, parse_args

    def declared(*names: str) -> list:
        # with the settings' defaults (a backend with sizes declares each size's weights: the default's are fetched)
        return list(dict.fromkeys(spec for name in names
                                  for spec in BACKENDS[name].weights_for(BACKENDS[name].read_settings({}))))

    with_weights = [entry.name for entry in BACKENDS.values() if entry.weights]
    first, *others = with_weights
    assert others, "the registry has more than one backend with weights"
    assert chosen_specs(None, False, {}) == declared(DEFAULT_BACKEND)
    assert chosen_specs(None, True, {}) == [spec for spec in declared(DEFAULT_BACKEND) if not spec.optional]
    # MODEL_BACKEND's backend, as on the endpoint it is deployed for; --backend names others
    assert chosen_specs(None, False, {"MODEL_BACKEND": others[0]}) == declared(others[0])
    assert chosen_specs([first, *others], False, {}) == declared(first, *others)
    with pytest.raises(SettingValueError, match="MODEL_BACKEND='nope' is unknown"):
        chosen_specs(None, False, {"MODEL_BACKEND": "nope"})
    name = first
    assert chosen_specs([name], False) == list(BACKENDS[name].weights)
    assert parse_args(["--no-lora"]).required_only and parse_args(["--required-only"]).required_only
    assert parse_args(["--backend", name]).backend == [name]
