"""Print torch's requirement as pyproject.toml pins it (e.g. `torch==2.13.0`), the one place it is pinned.

`make install` installs it before anything else, so that no other package pulls in an unpinned torch.
Standard library only: it runs before the project's dependencies are installed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def torch_requirement(pyproject: Path = PYPROJECT) -> str:
    """The `torch==…` line of the wan extra; SystemExit when there is not exactly one pinned one."""
    wan = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["wan"]
    pins = [requirement for requirement in wan if requirement.startswith("torch==")]
    if len(pins) != 1:
        raise SystemExit(f"{pyproject}: the wan extra must pin torch exactly once (torch==X.Y.Z), found {pins}")
    return pins[0]


if __name__ == "__main__":
    print(torch_requirement(Path(sys.argv[1]) if len(sys.argv) > 1 else PYPROJECT))
