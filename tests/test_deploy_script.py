"""deploy_runpod.sh, build_image.sh and push_image.sh, end to end.

Without docker on PATH (a dry run, and the clear stop without one), and with a stand-in `docker`
that records its arguments, so that a full deploy runs against the fake RunPod API of
test_deploy_endpoint.py and the build, push and API calls can be checked together.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from model.registry import BACKENDS
from tests.test_deploy_endpoint import API_KEY, FakeRunPodApi

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy_runpod.sh"
HF_TOKEN = "hf_build_secret_never_in_argv"
FAKE_DOCKER = """#!/bin/sh
# Records each call; answers like a docker with a daemon, buildx and a registry login.
printf '%s\\n' "$*" >> "$DOCKER_CALLS"
exit 0
"""


def path_without_docker() -> str:
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "docker").exists()]
    return os.pathsep.join(dirs)


def image_pattern(repository: str) -> str:
    """The tag build_image.sh gives: the commit, marked dirty (with a time) when the tree is."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return re.escape(f"{repository}:{commit}") + r"(?:-dirty-\d{14})?"


def run_deploy(tmp_path: Path, *args: str, path: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": path or path_without_docker(), "HOME": str(tmp_path), **env}
    return subprocess.run([str(DEPLOY), *args], capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=60)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    marker = tmp_path / "executed"
    file = tmp_path / "deploy.env"
    file.write_text(
        "# a comment\n"
        "IMAGE_REPOSITORY=docker.io/acme/talking-head\n"
        "export RUNPOD_WORKERS_MAX=7\n"
        "RUNPOD_HF_TOKEN_SECRET=hf_token\n"
        "RUNPOD_DATA_CENTERS='EU-RO-1,US-KS-2'\n"
        'BUCKET_NAME="talking-head-out"\n'
        'BUCKET_ACCESS_KEY_ID="{{ RUNPOD_SECRET_bucket_key_id }}"\n'
        'BUCKET_SECRET_ACCESS_KEY="{{ RUNPOD_SECRET_bucket_secret }}"\n'
        f"RUNPOD_NETWORK_VOLUME_ID=$(touch {marker})\n"
    )
    return file


def test_dry_run_without_docker_prints_the_full_plan(tmp_path, env_file):
    assert shutil.which("docker", path=path_without_docker()) is None
    result = run_deploy(tmp_path, "--dry-run", "--env-file", str(env_file), "--name", "th-b", "--memory-mode", "full")
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    # built and pushed in one step, straight from the builder: no local copy, no second push
    built = re.search(r"docker buildx build --platform linux/amd64 --target runtime --tag (\S+) --push ", out)
    assert built and re.fullmatch(image_pattern("docker.io/acme/talking-head"), built[1])
    assert "--load" not in out and "docker push" not in out
    assert f'"image": "{built[1]}"' in out
    assert "POST https://api.runpod.io/v2/templates" in out
    assert "PATCH https://api.runpod.io/v2/serverless/<endpoint-id>" in out
    assert '"name": "th-b"' in out and '"max": 7' in out and '"EU-RO-1"' in out
    assert re.search(r'"pools": \[\s*"ADA_80_PRO",\s*"AMPERE_80",\s*"BLACKWELL_96"\s*\]', out)
    assert '"BUCKET_NAME": "talking-head-out"' in out
    # the .env line is data, never run: the volume id is the literal text
    assert not (tmp_path / "executed").exists()
    assert "$(touch" in out
    assert "https://api.runpod.ai/v2/<endpoint-id>/runsync" in result.stdout
    assert "run_sync" in result.stdout


def test_a_flag_beats_the_env_file(tmp_path, env_file):
    result = run_deploy(tmp_path, "--dry-run", "--env-file", str(env_file), "--workers-max", "9")
    assert result.returncode == 0, result.stderr
    assert '"max": 9' in result.stderr and '"max": 7' not in result.stderr


def test_without_docker_a_real_deploy_stops_with_a_clear_message(tmp_path, env_file):
    result = run_deploy(tmp_path, "--env-file", str(env_file), RUNPOD_API_KEY=API_KEY)
    assert result.returncode == 1
    assert "docker is not installed" in result.stderr
    assert "Traceback" not in result.stderr and "buildx build" not in result.stderr


def test_missing_prerequisites_are_reported_together(tmp_path):
    result = run_deploy(tmp_path)
    assert result.returncode == 1
    for message in ("IMAGE_REPOSITORY is not set", "RUNPOD_API_KEY is not set", "docker is not installed"):
        assert message in result.stderr


def test_baking_the_weights_of_a_backend_the_baked_target_does_not_hold_is_refused_before_the_build(tmp_path, env_file):
    baked_ones = [name for name, entry in BACKENDS.items() if entry.deploy.bakes_into_image]
    other = next(name for name, entry in BACKENDS.items() if entry.needs_gpu and not entry.deploy.bakes_into_image)
    result = run_deploy(tmp_path, "--env-file", str(env_file), "--dry-run", "--bake-weights", "--backend", other)
    assert result.returncode == 1
    assert (f"--bake-weights: the Dockerfile bakes the weights of {', '.join(baked_ones)} only, not "
            f"{other}'s; leave it out and use --network-volume") in result.stderr
    assert "buildx build" not in result.stderr + result.stdout


@pytest.fixture
def fake_docker(tmp_path: Path) -> tuple[str, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{path_without_docker()}", tmp_path / "docker-calls"


def login(home: Path, registry: str) -> None:
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text(json.dumps({"auths": {registry: {}}, "credsStore": "desktop"}))


def test_without_a_registry_login_it_says_which_login(tmp_path, env_file, fake_docker):
    path, calls = fake_docker
    login(tmp_path, "ghcr.io")
    result = run_deploy(
        tmp_path, "--env-file", str(env_file), path=path, DOCKER_CALLS=str(calls), RUNPOD_API_KEY=API_KEY
    )
    assert result.returncode == 1
    assert "docker login docker.io" in result.stderr
    assert "buildx build" not in calls.read_text()


def test_full_deploy_builds_pushes_and_creates_then_updates(tmp_path, env_file, fake_docker):
    path, calls = fake_docker
    login(tmp_path, "https://index.docker.io/v1/")
    api = FakeRunPodApi()
    with api.serving() as base_url:
        # the environment beats the file's unknown volume id: one of the fake account's volumes
        env = {"DOCKER_CALLS": str(calls), "RUNPOD_API_KEY": API_KEY, "RUNPOD_API_BASE": base_url,
               "RUNPOD_NETWORK_VOLUME_ID": "vol42"}
        first = run_deploy(tmp_path, "--env-file", str(env_file), path=path, **env)
        assert first.returncode == 0, first.stderr
        second = run_deploy(
            tmp_path, "--env-file", str(env_file), "--bake-weights", path=path, HF_TOKEN=HF_TOKEN, **env
        )
        assert second.returncode == 0, second.stderr
    assert api.violations == []
    assert len(api.endpoints) == 1 and len(api.templates) == 1
    (endpoint,) = api.endpoints.values()
    assert f"Endpoint: {endpoint['id']}" in first.stdout
    assert f"https://api.runpod.ai/v2/{endpoint['id']}/runsync" in first.stdout

    build1, build2 = [line for line in calls.read_text().splitlines() if "buildx build" in line]
    assert not [line for line in calls.read_text().splitlines() if line.startswith("push")]
    pattern = image_pattern("docker.io/acme/talking-head")
    built = re.fullmatch(
        rf"buildx build --platform linux/amd64 --target runtime --tag ({pattern}) --push {ROOT}", build1
    )
    assert built
    baked = re.fullmatch(rf"buildx build --platform linux/amd64 --target baked-wan-s2v --tag ({pattern}-wan-s2v-baked) "
                         rf"--push --secret id=hf_token,env=HF_TOKEN {ROOT}", build2)
    assert baked
    assert HF_TOKEN not in calls.read_text() + second.stdout + second.stderr
    assert HF_TOKEN not in json.dumps([request.body for request in api.requests])
    assert endpoint["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_token }}"
    assert endpoint["image"] == baked[1]
    assert endpoint["workers"]["max"] == 7 and endpoint["dataCenterIds"] == ["EU-RO-1", "US-KS-2"]
    assert endpoint["networkVolumes"] == ["vol42"] and endpoint["env"]["RUNPOD_INIT_TIMEOUT"] == "3600"
    assert "rollout of release 2" in second.stderr


def test_image_flag_deploys_an_existing_image_without_docker(tmp_path, env_file):
    api = FakeRunPodApi()
    with api.serving() as base_url:
        result = run_deploy(tmp_path, "--env-file", str(env_file), "--image", "docker.io/acme/talking-head:0ld7a9",
                            "--backend", "lite", RUNPOD_API_KEY=API_KEY, RUNPOD_API_BASE=base_url,
                            RUNPOD_NETWORK_VOLUME_ID="vol42")
    assert result.returncode == 0, result.stderr
    (endpoint,) = api.endpoints.values()
    assert endpoint["image"] == "docker.io/acme/talking-head:0ld7a9" and "cpu" in endpoint


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("scripts/build_image.sh", ["docker.io/acme/th:v1"], "without a tag"),
        ("scripts/push_image.sh", ["docker.io/acme/th:latest"], "other than latest"),
        ("scripts/push_image.sh", ["docker.io/acme/th"], "explicit tag"),
    ],
)
def test_image_scripts_refuse_untagged_or_latest(tmp_path, script, args, message):
    result = subprocess.run([str(ROOT / script), "--dry-run", *args], capture_output=True, text=True,
                            env={"PATH": path_without_docker()}, timeout=30)
    assert result.returncode == 1 and message in result.stderr


def test_build_image_loads_locally_unless_told_to_push_and_a_failed_push_names_the_login(tmp_path, fake_docker):
    path, calls = fake_docker
    failing = tmp_path / "bin" / "docker"
    failing.write_text(FAKE_DOCKER.replace("exit 0", "exit 1"))
    script = ROOT / "scripts" / "build_image.sh"
    env = {"PATH": path, "DOCKER_CALLS": str(calls)}
    local = subprocess.run([str(script), "--dry-run", "ghcr.io/acme/th"], capture_output=True, text=True, env=env,
                           timeout=30)
    assert local.returncode == 0 and " --load " in local.stderr and "--push" not in local.stderr
    pushed = subprocess.run([str(script), "--push", "ghcr.io/acme/th"], capture_output=True, text=True, env=env,
                            timeout=30)
    assert pushed.returncode == 1
    assert "docker login ghcr.io" in pushed.stderr
    (call,) = calls.read_text().splitlines()
    assert call.startswith("buildx build ") and " --push " in call and "--load" not in call


@pytest.mark.parametrize("backend", [name for name, entry in BACKENDS.items() if entry.needs_gpu])
def test_build_image_bakes_a_backend_into_its_own_target_or_names_those_it_can(backend):
    """--bake-weights --backend NAME builds the Dockerfile's baked-NAME target, tagged -NAME-baked
    (so the deploy tool sees a baked image); a backend without one is refused before docker."""
    result = subprocess.run([str(ROOT / "scripts" / "build_image.sh"), "--dry-run", "--bake-weights", "--backend",
                             backend, "ghcr.io/acme/th"], capture_output=True, text=True,
                            env={"PATH": path_without_docker()}, timeout=30)
    baked = [name for name, entry in BACKENDS.items() if entry.deploy.bakes_into_image]
    if backend in baked:
        assert result.returncode == 0, result.stderr
        assert f" --target baked-{backend} " in result.stderr
        assert result.stdout.strip().endswith(f"-{backend}-baked")
    else:
        assert result.returncode == 1
        assert (f"the Dockerfile has no baked-{backend} target: weights can be baked for {', '.join(baked)}; "
                f"leave out --bake-weights for {backend}") in result.stderr


def test_mode_and_excluded_gpus_reach_the_endpoint_and_a_weightless_endpoint_gets_the_cached_model_hint(tmp_path):
    api = FakeRunPodApi()
    with api.serving() as base_url:
        bare = run_deploy(tmp_path, "--image", "docker.io/acme/talking-head:0ld7a9", "--default-mode", "quality",
                          "--exclude-gpu", "NVIDIA L40,NVIDIA A40", RUNPOD_API_KEY=API_KEY, RUNPOD_API_BASE=base_url)
        with_volume = run_deploy(tmp_path, "--image", "docker.io/acme/talking-head:0ld7a9", "--network-volume", "vol77",
                                 RUNPOD_API_KEY=API_KEY, RUNPOD_API_BASE=base_url)
    assert bare.returncode == 0, bare.stderr
    assert with_volume.returncode == 0, with_volume.stderr
    (endpoint,) = api.endpoints.values()
    first_create = [r.body for r in api.requests if (r.method, r.path) == ("POST", "/v2/serverless")][0]
    assert first_create["gpu"]["excludedTypes"] == ["NVIDIA L40", "NVIDIA A40"]
    first_template = [r.body for r in api.requests if (r.method, r.path) == ("POST", "/v2/templates")][0]
    assert first_template["env"]["DEFAULT_MODE"] == "quality"
    assert "DEFAULT_MODE" not in endpoint["env"] and "excludedTypes" not in endpoint["gpu"]
    hint = "set Model to Wan-AI/Wan2.2-S2V-14B (RunPod's cached models)"
    assert hint in " ".join(bare.stdout.split()) and hint not in " ".join(with_volume.stdout.split())
    # the second deploy dropped DEFAULT_MODE from the environment, and says so
    assert "removes DEFAULT_MODE" in with_volume.stderr


def test_help_shows_the_three_ways_to_have_the_weights():
    result = subprocess.run([str(DEPLOY), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for way in ("1. RunPod's cached models", "set Model to Wan-AI/Wan2.2-S2V-14B", "2. A network volume",
                "pod mounts the volume at /workspace",
                "python scripts/download_models.py --backend wan-s2v --model-dir /workspace/models",
                "the workers find the weights at /runpod-volume/models", "3. Baked into the image",
                "RUNPOD_INIT_TIMEOUT=3600"):
        assert way in text, way


def test_the_help_shows_exactly_the_flags_of_the_option_list_each_with_its_own_variable():
    from scripts.deploy import OPTIONS

    result = subprocess.run([str(DEPLOY), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    shown = re.findall(r"^  (--[a-z-]+)\b", result.stdout, re.M)
    assert shown == [option.flag for option in OPTIONS if option.flag]
    variables = {option.variable for option in OPTIONS if option.variable}
    for option in OPTIONS:
        named = {variable for variable in variables if re.search(rf"\b{variable}\b", option.help)}
        assert named <= {option.variable}, option.flag


def test_a_lite_deploy_leaves_out_the_memory_mode_of_the_env_file(tmp_path):
    assert "WAN_MEMORY_MODE=fp8" in (ROOT / ".env.example").read_text()
    result = run_deploy(tmp_path, "--dry-run", "--backend", "lite", "--env-file", str(ROOT / ".env.example"))
    assert result.returncode == 0, result.stderr
    assert "CPU cpu5c x4 vCPU" in result.stderr and "WAN_MEMORY_MODE" not in result.stderr


SETTING_VALUES = {
    "--name": "th-x", "--backend": "lite", "--default-mode": "fast", "--memory-mode": "full",
    "--gpu-pools": "ADA_80_PRO", "--exclude-gpu": "NVIDIA L40", "--gpu-count": "2", "--data-centers": "EU-RO-1",
    "--network-volume": "vol9", "--workers-min": "1", "--workers-max": "5", "--idle-timeout": "30",
    "--scaler": "request-count", "--scaler-value": "2", "--flashboot": "off", "--execution-timeout": "900",
    "--bake-weights": None,
}


@pytest.mark.parametrize("flag", SETTING_VALUES)
def test_each_setting_flag_does_what_its_env_file_variable_does(tmp_path, capfd, flag):
    from scripts.deploy import OPTIONS, main

    (option,) = [option for option in OPTIONS if option.flag == flag]
    assert option.variable
    value = SETTING_VALUES[flag]
    environ = {"PATH": path_without_docker(), "HOME": str(tmp_path)}

    def plan(flags: list[str], line: str) -> str:
        env_file = tmp_path / "deploy.env"
        env_file.write_text(f"IMAGE_REPOSITORY=docker.io/acme/talking-head\n{line}\n")
        assert main(["--dry-run", "--env-file", str(env_file), *flags], environ) == 0
        captured = capfd.readouterr()
        return re.sub(r"-dirty-\d{14}", "-dirty", captured.out + captured.err)

    by_flag = plan([flag] if value is None else [flag, value], "")
    assert by_flag == plan([], f"{option.variable}={value or 1}")
    assert by_flag != plan([], "")  # the setting shows in the plan


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--bogus"], "error: unknown argument: --bogus"), (["--dry-run", "--name"], "error: --name needs a value")],
)
def test_a_bad_command_line_is_refused_before_anything_runs(tmp_path, args, message):
    result = run_deploy(tmp_path, *args)
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith(message) and "buildx" not in result.stderr


def test_the_env_file_is_read_from_the_callers_directory_crlf_and_all(tmp_path):
    # a relative --env-file names a file in the caller's directory; a CRLF line ends at the value;
    # the first line of a key wins, as a shell's `source` would not (the environment still beats both)
    (tmp_path / "relative.env").write_text(
        "IMAGE_REPOSITORY=docker.io/acme/relative\r\nRUNPOD_WORKERS_MAX=4\r\nRUNPOD_WORKERS_MAX=5\n"
        "  export  RUNPOD_SCALER='request-count'\nRUNPOD_SCALER_VALUE=2"
    )
    result = run_deploy(tmp_path, "--dry-run", "--env-file", "relative.env")
    assert result.returncode == 0, result.stderr
    assert re.search(image_pattern("docker.io/acme/relative") + r" --push", result.stderr)
    assert '"max": 4' in result.stderr and '"requestCount": 2' in result.stderr


def test_an_env_file_line_that_is_not_key_value_is_named(tmp_path):
    (tmp_path / "bad.env").write_text("# fine\nIMAGE_REPOSITORY=docker.io/acme/th\nrm -rf /\n")
    result = run_deploy(tmp_path, "--dry-run", "--env-file", str(tmp_path / "bad.env"))
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'bad.env'} line 3 is not KEY=VALUE\n"


@pytest.mark.parametrize(
    ("args", "line", "message"),
    [
        ([], "RUNPOD_WORKERS_MAX=many", "error: RUNPOD_WORKERS_MAX (in the environment or "),
        (["--scaler", "fastest"], "", "error: --scaler: invalid choice: 'fastest'"),
        (["--backend", "lite"], "DEFAULT_MODE=fast", "DEFAULT_MODE='fast' is not a mode of the lite backend"),
        # a value is the word after its flag, even one that starts with '-'
        (["--exclude-gpu", "-L40"], "", "--exclude-gpu takes GPU type ids without the Hub's '-'"),
    ],
)
def test_a_setting_that_cannot_work_stops_the_deploy_before_the_build(tmp_path, fake_docker, args, line, message):
    path, calls = fake_docker
    login(tmp_path, "docker.io")
    env_file = tmp_path / "deploy.env"
    env_file.write_text(f"IMAGE_REPOSITORY=docker.io/acme/talking-head\n{line}\n")
    result = run_deploy(tmp_path, "--env-file", str(env_file), *args, path=path, DOCKER_CALLS=str(calls),
                        RUNPOD_API_KEY=API_KEY, RUNPOD_API_BASE="http://127.0.0.1:9")
    assert result.returncode == 2
    assert message in result.stderr
    assert "buildx build" not in calls.read_text()


def test_a_failed_build_stops_the_deploy_with_its_status(tmp_path):
    result = run_deploy(tmp_path, "--dry-run", IMAGE_REPOSITORY="docker.io/acme/talking-head:v1")
    assert result.returncode == 1
    assert "give the repository without a tag" in result.stderr
    assert "docker push" not in result.stderr and "/v2/templates" not in result.stderr and result.stdout == ""
