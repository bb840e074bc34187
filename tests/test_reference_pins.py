"""The reference commits of the parity suites: pinned in tests/reference_pins.toml, named by
README.md's clone commands, and enforced on the checkouts the suites read."""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

import pytest

from tests.reference_checkout import PINS_FILE, ReferenceCheckout, ReferencePinWarning, pin_problem, reference_pins

README = Path(__file__).resolve().parent.parent / "README.md"
# each reference the parity suites read, and the variable that points them at its checkout
PIN_VARIABLES = {"wan": "WAN_REFERENCE_REPO", "liveavatar": "LIVEAVATAR_REFERENCE_REPO",
                 "infinitetalk": "INFINITETALK_REFERENCE_REPO", "omniavatar": "OMNIAVATAR_REFERENCE_REPO"}
PIN_KEYS = tuple(PIN_VARIABLES)


def test_each_reference_is_pinned_to_a_full_commit_with_its_variable():
    pins = reference_pins()
    assert sorted(pins) == sorted(PIN_KEYS), PINS_FILE
    assert {key: pins[key]["env"] for key in PIN_KEYS} == PIN_VARIABLES
    for key in PIN_KEYS:
        assert re.fullmatch(r"[0-9a-f]{40}", pins[key]["commit"]), pins[key]
        assert pins[key]["repository"].startswith("https://github.com/"), pins[key]


@pytest.mark.parametrize("key", PIN_KEYS)
def test_the_readme_clones_each_reference_and_checks_out_its_pinned_commit(key):
    pin = reference_pins()[key]
    readme = README.read_text()
    clone = re.search(rf"^git clone {re.escape(pin['repository'])} (\S+)", readme, re.MULTILINE)
    assert clone, f"README.md does not clone {pin['repository']}"
    folder = clone.group(1)
    checkouts = re.findall(rf"^git -C {re.escape(folder)} checkout (\S+)", readme, re.MULTILINE)
    assert checkouts == [pin["commit"]], f"README.md checks out {checkouts} in {folder}, not {pin['commit']}"
    assert re.search(rf"\b{pin['env']}={re.escape(folder)}\b", readme), f"README.md does not set {pin['env']}"


def _git(folder: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture
def tiny_repo(tmp_path) -> tuple[Path, str, str]:
    """A repository with the marker file, at its second commit; returns it and both commits."""
    folder = tmp_path / "checkout"
    (folder / "pkg").mkdir(parents=True)
    _git(folder, "init", "-q")
    (folder / "pkg" / "marker.py").write_text("first = 1\n")
    _git(folder, "add", ".")
    _git(folder, "commit", "-q", "-m", "first")
    first = _git(folder, "rev-parse", "HEAD")
    (folder / "pkg" / "marker.py").write_text("second = 2\n")
    _git(folder, "commit", "-q", "-am", "second")
    return folder, first, _git(folder, "rev-parse", "HEAD")


def test_a_checkout_at_the_pinned_commit_passes_and_one_at_another_is_named_with_the_fix(tiny_repo):
    folder, first, second = tiny_repo
    assert pin_problem(folder, "X_REPO", "https://example.com/x", second) is None
    problem = pin_problem(folder, "X_REPO", "https://example.com/x", first)
    assert problem == (
        f"X_REPO={folder} is at commit {second}, not at the pinned {first}, so the parity tests compare "
        f"with that commit's code; to compare with the pinned one, run `git -C {folder} fetch https://example.com/x "
        f"&& git -C {folder} checkout {first}` (tests/reference_pins.toml)"
    )


def test_a_checkout_without_git_cannot_be_checked_and_says_so(tmp_path):
    (tmp_path / "pkg").mkdir()
    problem = pin_problem(tmp_path, "X_REPO", "https://example.com/x", "0" * 40)
    assert problem is not None and problem.startswith(f"X_REPO={tmp_path} is not a git checkout")


def test_the_harness_warns_on_an_unpinned_checkout_and_still_compares(tiny_repo, monkeypatch):
    folder, first, _ = tiny_repo
    checkout = ReferenceCheckout(pin="wan", env="WAN_REFERENCE_REPO", what="Wan2.2", package="pkg",
                                 marker="pkg/marker.py", package_dirs=lambda root: [], stand_ins={})
    monkeypatch.setenv("WAN_REFERENCE_REPO", str(folder))
    with pytest.warns(ReferencePinWarning, match="not at the pinned"):
        assert checkout.root() == folder
    checkout.commit = _git(folder, "rev-parse", "HEAD")
    checkout._checked.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert checkout.root() == folder
    assert first != checkout.commit
