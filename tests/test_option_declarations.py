"""Every job field is declared once (model/options.py): docs/CONTRACT.md's field table and the Hub
listing agree with the declarations, and the declarations are what validates a job."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from handler.schema import MODES, SHARED_OPTIONS, parse_job
from model.options import BackendOptions, InvalidOptionError, Option
from model.registry import ALL_MODES, BACKENDS

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "docs" / "CONTRACT.md"
KIND_NAMES = {str: "string", int: "int", float: "float", bool: "bool"}
OPTIONS_CLASSES: dict[str, type[BackendOptions]] = {
    name: entry.load_options_class() for name, entry in BACKENDS.items()
}
BACKEND_OPTIONS = [
    (backend, name, declared)
    for backend, options_class in OPTIONS_CLASSES.items()
    for name, declared in options_class.declarations().items()
]


def contract_table(heading: str) -> dict[str, dict[str, str]]:
    """The rows of the first table under `heading`, by the first column's `name`."""
    text = CONTRACT.read_text()
    section = text[text.index(f"\n{heading}\n"):]
    lines = section.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("|"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == len(header), line
        rows[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
    return rows


JOB_FIELDS = contract_table("## Job input (`job[\"input\"]`)")


def plain(text: str) -> str:
    """Markdown text as words: no emphasis, no code ticks, single spaces."""
    return " ".join(text.replace("`", "").replace("**", "").split())


def number(value: int | float, kind: type) -> str:
    return str(value) if kind is int else f"{value:g}"


def type_text(declared: Option) -> str:
    """How the contract's type column begins for `declared`."""
    if declared.choices:
        return ", ".join(f'`"{choice}"`' for choice in declared.choices)
    text = KIND_NAMES[declared.kind]
    if declared.max_length is not None:
        text += f", at most {declared.max_length} characters"
    if declared.low is not None and declared.high is not None:
        text += f", {number(declared.low, declared.kind)}–{number(declared.high, declared.kind)}"
    return text


def every_declaration() -> list[tuple[str, str, Option]]:
    return [("shared", name, declared) for name, declared in SHARED_OPTIONS.items()] + BACKEND_OPTIONS


def test_the_contract_documents_exactly_the_declared_fields():
    declared = set(SHARED_OPTIONS) | {name for _, name, _ in BACKEND_OPTIONS}
    assert set(JOB_FIELDS) == declared


def test_a_field_two_backends_take_is_declared_alike():
    seen: dict[str, Option] = dict(SHARED_OPTIONS)
    for backend, name, declared in BACKEND_OPTIONS:
        assert seen.setdefault(name, declared) == declared, f"{backend}'s {name} differs from another declaration"


@pytest.mark.parametrize("owner, name, declared", every_declaration(), ids=lambda value: str(value)[:40])
def test_the_contract_row_states_the_declaration(owner, name, declared):
    row = JOB_FIELDS[name]
    assert row["type"].startswith(type_text(declared)), (name, row["type"], type_text(declared))
    if declared.modes:
        only = " and ".join(f"`{mode}`" for mode in declared.modes)
        assert f"mode {only} only" in row["type"], (name, row["type"])
    if declared.default is not None:
        assert row["default"].startswith(f"`{json.dumps(declared.default)}`"), (name, row["default"])
    elif owner != "shared":
        assert row["default"].startswith("the model's own"), (name, row["default"])
    else:  # decided at run time (a random seed, the endpoint's mode, ...): not one value
        assert not row["default"].startswith("`"), (name, row["default"])
    assert plain(declared.description) in plain(row["meaning"]), (name, declared.description, row["meaning"])


def test_the_contract_says_which_backend_takes_which_fields():
    text = plain(CONTRACT.read_text())
    for backend, options_class in OPTIONS_CLASSES.items():
        names = list(options_class.declarations())
        if not names:
            # named nowhere as taking fields: covered by the sentence for every such backend
            assert "a backend not named here" in text and "takes none" in text, backend
            assert not re.search(rf"{re.escape(backend)} takes ", text), backend
            continue
        listed = re.search(rf"{re.escape(backend)} takes ([a-z_, ]+?)(?: and ([a-z_]+))?[.;]", text)
        assert listed, backend
        found = {part.strip() for part in listed.group(1).split(",")} | {listed.group(2)} - {None}
        assert found == set(names), (backend, found)


def test_the_modes_are_the_backends_modes():
    assert MODES == ALL_MODES == tuple(dict.fromkeys(m for entry in BACKENDS.values() for m in entry.modes))
    assert SHARED_OPTIONS["mode"].choices == MODES
    for backend, name, declared in BACKEND_OPTIONS:
        assert set(declared.modes) <= set(BACKENDS[backend].modes), (backend, name)


# --- validation runs from the declarations ---------------------------------------------------------

def in_range_and_out(declared: Option) -> tuple[list[Any], list[Any]]:
    """Values the declaration takes (its edges), and values it refuses (just past them, other types)."""
    if declared.choices:
        return list(declared.choices), ["not-a-choice", 1, True]
    if declared.kind is bool:
        return [True, False], ["true", 1]
    if declared.kind in (int, float):
        step = 1 if declared.kind is int else 0.001
        assert declared.low is not None and declared.high is not None
        return [declared.low, declared.high], [declared.low - step, declared.high + step, "1", True, float("nan")]
    good: list[Any] = ["", "x"] + (["x" * declared.max_length] if declared.max_length else [])
    return good, [1, ["x"]] + (["x" * (declared.max_length + 1)] if declared.max_length else [])


@pytest.mark.parametrize("backend, name, declared", BACKEND_OPTIONS, ids=lambda value: str(value)[:40])
def test_a_backend_option_is_validated_by_its_declaration(backend, name, declared):
    options_class = OPTIONS_CLASSES[backend]
    mode = (declared.modes or BACKENDS[backend].modes)[0]
    good, bad = in_range_and_out(declared)
    for value in good:
        assert getattr(options_class.parse({name: value}, mode, backend), name) == value
    for value in bad:
        with pytest.raises(InvalidOptionError) as refused:
            options_class.parse({name: value}, mode, backend)
        assert refused.value.field == name and str(refused.value).startswith(f"{name} "), str(refused.value)
    assert getattr(options_class.parse({}, mode, backend), name) == declared.default
    for other in set(BACKENDS[backend].modes) - set(declared.modes or BACKENDS[backend].modes):
        with pytest.raises(InvalidOptionError, match=f"^{name} has no meaning in mode '{other}'"):
            options_class.parse({name: good[0]}, other, backend)


SIMPLE_SHARED = [(name, declared) for name, declared in SHARED_OPTIONS.items()
                 if name in ("prompt", "seed", "mode", "stream", "output_type")]


@pytest.mark.parametrize("name, declared", SIMPLE_SHARED, ids=[name for name, _ in SIMPLE_SHARED])
def test_a_shared_field_is_validated_by_its_declaration(name, declared):
    from handler.errors import JobError

    sources = {"audio_file": "UklGRg==", "image_file": "/9j/"}
    good, bad = in_range_and_out(declared)
    for value in good:
        assert getattr(parse_job({"input": {**sources, name: value}}, 300.0), name) == value
    for value in bad:
        with pytest.raises(JobError) as refused:
            parse_job({"input": {**sources, name: value}}, 300.0)
        assert refused.value.message.startswith(f"{name} "), str(refused.value)
    if declared.default is not None:
        assert getattr(parse_job({"input": sources}, 300.0), name) == declared.default


# --- the Hub listing ------------------------------------------------------------------------------

def test_the_hub_listing_exposes_settings_not_job_fields():
    """hub.json's inputs are the endpoint's environment variables; no job field is one of them."""
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    assert set(hub) <= {"title", "description", "type", "category", "iconUrl", "config"}
    job_fields = set(JOB_FIELDS)
    for variable in hub["config"]["env"]:
        assert variable["key"].isupper() and variable["key"] not in job_fields, variable["key"]


def listing_jobs() -> list[tuple[str, dict[str, Any]]]:
    """The jobs the listing shows: .runpod/tests.json's (on its backend) and the page's example."""
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())
    backend = {item["key"]: item["value"] for item in tests["config"]["env"]}["MODEL_BACKEND"]
    jobs = [(backend, {"input": test["input"]}) for test in tests["tests"]]
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    listed = {item["key"]: item for item in hub["config"]["env"]}["MODEL_BACKEND"]["input"]["default"]
    page = (ROOT / ".runpod" / "README.md").read_text()
    # a block preceded by <!-- MODEL_BACKEND=name --> is that backend's job, the others the default's
    jobs += [(named or listed, json.loads(block))
             for named, block in re.findall(r"(?:<!-- MODEL_BACKEND=([\w-]+) -->\n)?```json\n(.*?)```", page, re.S)]
    assert len(jobs) >= 2
    return jobs


@pytest.mark.parametrize("backend, job", listing_jobs(), ids=lambda value: str(value)[:30])
def test_the_listings_jobs_send_declared_fields_their_declarations_take(backend, job):
    request = parse_job(job, 300.0, BACKENDS[backend].modes[0])
    OPTIONS_CLASSES[backend].parse(request.backend_fields, request.mode, backend)


def test_the_contract_states_wan_s2vs_own_defaults_and_its_fast_step_cap():
    """What None means for wan-s2v's options is the model's config, which the rows quote."""
    from model.wan_s2v.config import (
        FAST_MAX_STEPS,
        FAST_SAMPLE_STEPS,
        GUIDANCE_SCALE,
        SAMPLE_SHIFT,
        SAMPLE_SOLVER,
        SAMPLE_STEPS,
    )

    steps = JOB_FIELDS["num_inference_steps"]
    assert f"(mode `fast`: 1–{FAST_MAX_STEPS})" in steps["type"]
    assert f"({SAMPLE_STEPS} for Wan2.2-S2V; {FAST_SAMPLE_STEPS} in mode `fast`)" in steps["default"]
    assert f"({GUIDANCE_SCALE:g} for Wan2.2-S2V)" in JOB_FIELDS["guidance_scale"]["default"]
    assert f"(`{SAMPLE_SOLVER}` for Wan2.2-S2V)" in JOB_FIELDS["sample_solver"]["default"]
    assert f"({SAMPLE_SHIFT} for Wan2.2-S2V)" in JOB_FIELDS["sample_shift"]["default"]
