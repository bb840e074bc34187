"""What the InfiniteTalk harness needs from tests/reference_checkout.py, on a tiny fake checkout:
several top packages, a top-level script importing them, and nothing left in sys.modules.
Then, with INFINITETALK_REFERENCE_REPO, that the real checkout loads the same way."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from tests.infinitetalk_reference import REFERENCE_ENV, generate_script, requires_infinitetalk
from tests.reference_checkout import ReferenceCheckout, ReferencePinWarning, reference_pins


@pytest.fixture
def fake_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ReferenceCheckout:
    """Packages `alpha` (with a sub-package) and `beta` (a bare folder), and `run.py` importing
    both and a missing optional package, which gets a stand-in."""
    (tmp_path / "alpha" / "inner").mkdir(parents=True)
    (tmp_path / "alpha" / "__init__.py").write_text("raise RuntimeError('package __init__ files must not run')\n")
    (tmp_path / "alpha" / "inner" / "values.py").write_text("ANSWER = 42\n")
    (tmp_path / "beta").mkdir()
    (tmp_path / "beta" / "tool.py").write_text("from alpha.inner.values import ANSWER\nDOUBLE = 2 * ANSWER\n")
    (tmp_path / "run.py").write_text(
        "import optional_thing_not_installed as extra\nfrom beta.tool import DOUBLE\nTOTAL = DOUBLE + extra.ONE\n"
    )
    monkeypatch.setenv(REFERENCE_ENV, str(tmp_path))
    checkout = ReferenceCheckout(
        pin="infinitetalk", env=REFERENCE_ENV, what="a fake checkout", package=("alpha", "beta"),
        marker="alpha/inner/values.py",
        package_dirs=lambda root: [root / "alpha", root / "alpha" / "inner", root / "beta"],
        stand_ins={"optional_thing_not_installed": {"ONE": 1}},
    )
    # the fake checkout is no git repository: its pin cannot be checked (the harness says so)
    checkout._checked[tmp_path] = None
    return checkout


def test_every_top_package_and_a_script_load_and_leave_nothing_registered(fake_checkout: ReferenceCheckout):
    assert fake_checkout.package == "alpha"
    assert fake_checkout.module("inner.values").ANSWER == 42
    tool = fake_checkout.import_module("beta.tool")
    assert tool.DOUBLE == 84
    script = fake_checkout.script("run")
    assert script.TOTAL == 85
    # later imports share the loaded modules
    assert fake_checkout.import_module("beta.tool") is tool
    assert fake_checkout.script("run") is script
    tops = ("alpha", "beta", "run", "optional_thing_not_installed")
    assert [name for name in sys.modules if name.split(".")[0] in tops] == []


def test_a_module_outside_the_checkouts_packages_is_refused(fake_checkout: ReferenceCheckout):
    with pytest.raises(ValueError, match="gamma.x is not in the packages"):
        fake_checkout.import_module("gamma.x")


def test_infinitetalk_is_pinned_to_a_full_commit_with_its_variable():
    pin = reference_pins()["infinitetalk"]
    assert pin["env"] == REFERENCE_ENV
    assert pin["repository"] == "https://github.com/MeiGen-AI/InfiniteTalk"
    assert len(pin["commit"]) == 40 and int(pin["commit"], 16) >= 0


@requires_infinitetalk
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_reference_script_loads_without_leaving_its_packages_registered():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReferencePinWarning)
        script = generate_script()
    assert callable(script.get_embedding) and callable(script._parse_args)
    assert not [name for name in sys.modules if name.split(".")[0] in ("wan", "src", "generate_infinitetalk")]
