"""Load a reference implementation's modules from its checkout, for parity tests.

`wan_reference.py` (the official Wan2.2 repository), `liveavatar_reference.py` (Live Avatar)
and `infinitetalk_reference.py` (InfiniteTalk) run files of a checkout found through an
environment variable, and skip without it. Their package `__init__` files import every pipeline
(and with them decord, librosa, the TTS stack...), so the packages are registered bare and only
the requested files are executed; optional imports this environment lacks are replaced by
stand-ins. A checkout may have several top packages (InfiniteTalk: `wan` and `src`) and top-level
scripts (`generate_infinitetalk.py`), loaded the same way. Nothing stays registered in
`sys.modules` after an import: the loaded modules keep working through their own globals, and
are kept here so that later imports share them (one class per name, not one per call).

Each checkout must be at the commit `reference_pins.toml` pins for it; at another, or where git
cannot tell, its tests fail saying which commit to check out.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib
import types
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

PINS_FILE = Path(__file__).with_name("reference_pins.toml")


@functools.cache
def reference_pins() -> dict[str, dict[str, str]]:
    """Each reference's `env`, `repository` and `commit`, by its key in reference_pins.toml."""
    with PINS_FILE.open("rb") as file:
        return tomllib.load(file)


def checkout_commit(root: Path) -> str | None:
    """The commit checked out at `root`, or None where git cannot tell (no git, not a repository)."""
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def pin_problem(root: Path, env: str, repository: str, commit: str) -> str | None:
    """Why the checkout at `root` is not the pinned one, in a sentence; None when it is."""
    found = checkout_commit(root)
    if found == commit:
        return None
    fix = f"run `git -C {root} fetch {repository} && git -C {root} checkout {commit}` (tests/reference_pins.toml)"
    if found is None:
        return f"{env}={root} is not a git checkout, so its commit cannot be checked against the pinned {commit}; {fix}"
    return (f"{env}={root} is at commit {found}, not at the pinned {commit}, so the parity tests compare "
            f"with that commit's code; to compare with the pinned one, {fix}")


class ReferencePinWarning(UserWarning):
    """A reference checkout is not at the commit tests/reference_pins.toml pins."""


class EasyDict(dict):
    """The part of easydict.EasyDict that the reference config files use."""

    def __getattr__(self, key: str):
        try:
            return self[key]
        except KeyError as error:
            raise AttributeError(key) from error

    def __setattr__(self, key: str, value) -> None:
        self[key] = value


def plain_module(name: str, attributes: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


class ReferenceCheckout:
    """One reference repository: where its checkout is, and its modules once loaded.

    pin: its key in reference_pins.toml (the commit the checkout must be at); env:
    the variable naming the checkout; what: its name in skip messages; package: the top
    package (`wan`), or several (the first is the one `module` names); marker: a file (relative
    to the root) that only such a checkout has;
    package_dirs(root): the folders registered as bare packages; stand_ins: module name ->
    attributes, registered (by `stand_in_module`) only where the real package is not installed;
    while_importing: a context around each fresh import; after_import(loaded): called after it,
    while the modules are still registered.
    """

    def __init__(
        self,
        *,
        pin: str,
        env: str,
        what: str,
        package: str | tuple[str, ...],
        marker: str,
        package_dirs: Callable[[Path], Iterable[Path]],
        stand_ins: Mapping[str, dict[str, Any]],
        stand_in_module: Callable[[str, dict[str, Any]], types.ModuleType] = plain_module,
        while_importing: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
        after_import: Callable[[dict[str, types.ModuleType]], None] | None = None,
    ):
        self.packages = (package,) if isinstance(package, str) else tuple(package)
        self.env, self.what, self.package, self.marker = env, what, self.packages[0], marker
        #: the commit this checkout must be at (reference_pins.toml)
        self.repository, self.commit = reference_pins()[pin]["repository"], reference_pins()[pin]["commit"]
        assert reference_pins()[pin]["env"] == env, f"reference_pins.toml names another variable for {pin}"
        self._checked: dict[Path, str | None] = {}
        self._package_dirs = package_dirs
        self._stand_ins = stand_ins
        self._stand_in_module = stand_in_module
        self._while_importing = while_importing
        self._after_import = after_import
        #: every module of the checkout loaded so far, by its full name
        self.loaded: dict[str, types.ModuleType] = {}
        self.requires = pytest.mark.skipif(
            not os.environ.get(env), reason=f"set {env} to a checkout of {what} to run its parity tests"
        )

    def root(self) -> Path:
        """The checkout's root; skips the calling test when it is not configured or not such a checkout."""
        root = os.environ.get(self.env)
        if not root:
            pytest.skip(f"{self.env} is not set")
        path = Path(root)
        if not (path / self.marker).is_file():
            pytest.skip(f"{self.env}={root} is not a checkout of {self.what}")
        if path not in self._checked:
            self._checked[path] = pin_problem(path, self.env, self.repository, self.commit)
            problem = self._checked[path]
            if problem is not None:
                # still compared: a newer reference is worth checking against, but the log says so
                warnings.warn(ReferencePinWarning(problem), stacklevel=2)
        return path

    def module(self, name: str) -> types.ModuleType:
        """Import `<package>.<name>` from the checkout (skips as `root` does, or without einops)."""
        return self.import_module(f"{self.package}.{name}")

    def import_module(self, full_name: str) -> types.ModuleType:
        """Import `full_name` (in any of the checkout's top packages) as `module` does."""
        if full_name.split(".")[0] not in self.packages:
            raise ValueError(f"{full_name} is not in the packages {self.packages} of {self.what}")
        if importlib.util.find_spec("einops") is None:
            pytest.skip(f"the code of {self.what} needs einops (in the project's test dependencies)")
        return self._import(self.root(), full_name, lambda: importlib.import_module(full_name))

    def script(self, stem: str) -> types.ModuleType:
        """Execute the checkout's top-level `<stem>.py` (skips as `root` does) as module `stem`,
        with its imports of the checkout's packages loaded as `module` loads them."""
        root = self.root()
        if importlib.util.find_spec("einops") is None:
            pytest.skip(f"the code of {self.what} needs einops (in the project's test dependencies)")

        def run() -> None:
            spec = importlib.util.spec_from_file_location(stem, root / f"{stem}.py")
            assert spec is not None and spec.loader is not None, f"{root / stem}.py cannot be loaded"
            module = importlib.util.module_from_spec(spec)
            sys.modules[stem] = module
            spec.loader.exec_module(module)

        return self._import(root, stem, run, script=True)

    def _import(
        self, root: Path, full_name: str, run: Callable[[], object], script: bool = False
    ) -> types.ModuleType:
        if full_name in self.loaded:
            return self.loaded[full_name]
        added = [key for key in self.loaded if key not in sys.modules]
        sys.modules.update({key: self.loaded[key] for key in added})
        if script:
            added.append(full_name)
        try:
            with self._while_importing():
                added += self._register_bare_packages(root)
                added += self._register_stand_ins()
                run()
            ours = [key for key in sys.modules if key.split(".")[0] in self.packages or (script and key == full_name)]
            for key in ours:
                if key not in self.loaded:
                    self.loaded[key] = sys.modules[key]
                    added.append(key)
            if self._after_import is not None:
                self._after_import(self.loaded)
            return self.loaded[full_name]
        finally:
            # Left registered, they would make a later `import <package>` in the same process see
            # a half-built package.
            for key in added:
                sys.modules.pop(key, None)

    def _register_bare_packages(self, root: Path) -> list[str]:
        names = []
        for package_dir in self._package_dirs(root):
            name = ".".join(package_dir.relative_to(root).parts)
            if not all(part.isidentifier() for part in name.split(".")) or name in sys.modules:
                continue
            package = types.ModuleType(name)
            package.__path__ = [str(package_dir)]
            package.__package__ = name
            sys.modules[name] = package
            names.append(name)
        return names

    def _register_stand_ins(self) -> list[str]:
        names: list[str] = []
        for name, attributes in self._stand_ins.items():
            if name in sys.modules:
                continue
            # find_spec of a stand-in registered just before would raise: its submodules go in too
            top = name.split(".")[0]
            if top not in names and importlib.util.find_spec(top) is not None:
                continue
            module = self._stand_in_module(name, attributes)
            sys.modules[name] = module
            names.append(name)
            parent, _, child = name.rpartition(".")
            if parent in sys.modules:
                setattr(sys.modules[parent], child, module)
        return names
