"""The release workflow (.github/workflows/release.yml): actionlint clean, and its shell steps run here
on the tags, changelog and image names they are written for."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def steps() -> dict[str, dict]:
    (job,) = yaml.safe_load(WORKFLOW.read_text())["jobs"].values()
    return {step["name"]: step for step in job["steps"] if "name" in step}


def run_step(name: str, env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Run one `run:` step in bash as GitHub's runner does (-e, pipefail), returning what it wrote to GITHUB_OUTPUT."""
    output = cwd / "github-output"
    output.write_text("")
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # python3 3.11+ for the tag step's tomllib
    result = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", steps()[name]["run"]],
                            cwd=cwd, env={"PATH": path, **env, "GITHUB_OUTPUT": str(output)},
                            capture_output=True, text=True, timeout=60)
    written, lines = {}, iter(output.read_text().splitlines())
    for line in lines:
        if "<<" in line:
            key, marker = line.split("<<")
            written[key] = "\n".join(iter(lines.__next__, marker))
        else:
            key, _, value = line.partition("=")
            written[key] = value
    return result, written


# the test extra's actionlint lands beside the interpreter (make test runs .venv/bin/python, not on PATH)
ACTIONLINT = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")


@pytest.mark.skipif(ACTIONLINT is None, reason="needs actionlint (the test extra installs it)")
def test_the_workflow_is_actionlint_clean():
    assert ACTIONLINT is not None
    result = subprocess.run([ACTIONLINT, str(WORKFLOW)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_runs_on_version_tags_only():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads the key `on` as true
    assert triggers == {"push": {"tags": ["v*"]}}


@pytest.mark.parametrize(("tag", "expected"), [
    ("v0.1.0", {"version": "0.1.0", "minor": "0.1", "prerelease": "false"}),
    ("v0.1.0-rc.1", {"version": "0.1.0-rc.1", "minor": "0.1", "prerelease": "true"}),
])
def test_a_version_tag_gives_the_version_and_its_minor(tmp_path, tag, expected):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    result, written = run_step("Version from the tag", {"TAG": tag}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert written == expected


@pytest.mark.parametrize("tag", ["0.1.0", "v0.1", "v0.1.0.1", "vnext", "v9.9.9"])
def test_other_tags_and_a_version_pyproject_does_not_state_are_refused(tmp_path, tag):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    result, written = run_step("Version from the tag", {"TAG": tag}, tmp_path)
    assert result.returncode == 1 and "::error::" in result.stdout and written == {}


def test_the_image_gets_the_version_its_minor_and_latest_a_pre_release_only_its_version(tmp_path):
    env = {"IMAGE": "docker.io/you/talking-head", "VERSION": "0.2.1", "MINOR": "0.2", "PRERELEASE": "false"}
    result, written = run_step("Image tags", env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert written["tags"].splitlines() == [f"{env['IMAGE']}:{tag}" for tag in ("0.2.1", "0.2", "latest")]
    result, written = run_step("Image tags", {**env, "VERSION": "0.2.1-rc.1", "PRERELEASE": "true"}, tmp_path)
    assert written["tags"].splitlines() == [f"{env['IMAGE']}:0.2.1-rc.1"]
    result, written = run_step("Image tags", {**env, "IMAGE": ""}, tmp_path)
    assert result.returncode == 1 and "IMAGE_REPOSITORY" in result.stdout


def test_the_release_notes_are_the_versions_changelog_section(tmp_path):
    changelog = ROOT.joinpath("CHANGELOG.md").read_text()
    assert "\n## [Unreleased]\n" in changelog
    released = changelog.replace("## [Unreleased]", "## [Unreleased]\n\n## [0.2.0] - 2027-01-15", 1)
    (tmp_path / "CHANGELOG.md").write_text(released + "\n## [0.1.0] - 2026-12-01\n\n### Added\n\n- only in 0.1.0\n")
    result, _ = run_step("Release notes from CHANGELOG.md", {"VERSION": "0.2.0"}, tmp_path)
    assert result.returncode == 0, result.stderr
    notes = (tmp_path / "release-notes.md").read_text()
    assert notes.strip() == changelog.split("## [Unreleased]", 1)[1].strip()
    assert "an entry of 0.1.0 only" not in notes and "## [" not in notes
    result, _ = run_step("Release notes from CHANGELOG.md", {"VERSION": "9.9.9"}, tmp_path)
    assert result.returncode == 1 and "no section '## [9.9.9]'" in result.stdout
