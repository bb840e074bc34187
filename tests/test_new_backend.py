"""A new backend is its sub-package plus one registry line, with no other file changed.

The lite backend is copied, under another name, into a copy of the project; one line is added to
model/registry.py; then the deploy tool, the worker, the downloader and the agreement tests of
the registry, the Hub listing and the contract run on that copy.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handler.sample import sample_job_input
from tests.conftest import ROOT, WorkerProcess

NEW = "lite-copy"
NEW_PACKAGE = "lite_copy"


def project_files() -> list[str]:
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True, check=True, timeout=60)
    return [name for name in listed.stdout.splitlines() if (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    copy = tmp_path_factory.mktemp("project")
    for name in project_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    # a checkout of its own (the deploy tool tags images by commit), so git says what changed
    git = ["git", "-C", str(copy), "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the project as it is"]):
        subprocess.run(git + command, check=True, capture_output=True, timeout=60)
    # the sub-package: lite's files under another package and backend name
    package = copy / "model" / NEW_PACKAGE
    shutil.copytree(copy / "model" / "lite", package, ignore=shutil.ignore_patterns("__pycache__"))
    for source in package.glob("*.py"):
        text = source.read_text().replace("model.lite.", f"model.{NEW_PACKAGE}.")
        source.write_text(text.replace('name="lite"', f'name="{NEW}"'))
    # the one registry line
    registry = copy / "model" / "registry.py"
    text = registry.read_text()
    assert text.count('    "model.lite",\n') == 1
    registry.write_text(text.replace('    "model.lite",\n', f'    "model.lite",\n    "model.{NEW_PACKAGE}",\n'))
    status = subprocess.run(git + ["status", "--porcelain"], check=True, capture_output=True, text=True, timeout=60)
    assert sorted(status.stdout.splitlines()) == [" M model/registry.py", f"?? model/{NEW_PACKAGE}/"]
    if (ROOT / ".venv").is_dir():  # the environment make install built, as the tools look for it
        (copy / ".venv").symlink_to(ROOT / ".venv")
    yield copy


def run(project: Path, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("RUNPOD_", "BUCKET_", "HF_"))}
    environ.update(PYTHONPATH=str(project), HOME=str(project), **env)
    return subprocess.run(list(command), cwd=project, env=environ, capture_output=True, text=True, timeout=300)


def test_the_deploy_tool_plans_an_endpoint_for_it(project):
    result = run(project, str(project / "deploy_runpod.sh"), "--dry-run", "--backend", NEW,
                 "--env-file", str(project / ".env.example"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'"MODEL_BACKEND": "{NEW}"' in result.stdout + result.stderr
    assert "CPU cpu5c x4 vCPU" in result.stderr and "WAN_MEMORY_MODE" not in result.stderr


def test_the_worker_runs_a_job_with_it(project, tmp_path):
    worker = WorkerProcess({"MODEL_BACKEND": NEW, "MODEL_DIR": str(tmp_path / "models")}, tmp_path, root=project)
    try:
        reply = worker.runsync(sample_job_input(resolution="128*128"))
        assert "model.lite_copy" in worker.log() or "loading backend lite-copy" in worker.log()
    finally:
        worker.stop()
    assert reply["status"] == "COMPLETED", reply
    output = reply["output"]
    assert output["success"] is True and output["num_frames"] > 0
    assert len(base64.b64decode(output["video_base64"])) == output["file_size_bytes"]


def test_the_downloader_knows_it(project, tmp_path):
    result = run(project, sys.executable, "scripts/download_models.py", "--backend", NEW,
                 "--model-dir", str(tmp_path / "models"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert NEW in result.stdout + result.stderr


def test_the_registry_hub_and_contract_agreements_hold_with_it(project):
    tests = ["tests/test_deploy_files.py", "tests/test_environment_docs.py"]
    tests += [name for name in ("tests/test_option_declarations.py",) if (project / name).is_file()]
    # test_deploy_files.py's registry and Hub checks (not the one that starts a worker from handler.py: it
    # proves nothing of backends); the other two files are agreement checks whole
    agreements = "(hub or registry) and not handler_py or not test_deploy_files"
    result = run(project, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", agreements, *tests)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout
