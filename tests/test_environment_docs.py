"""The README's and the contract's environment tables list what the settings module reads, with its defaults."""

from __future__ import annotations

import re
from pathlib import Path

from handler.settings import RUNPOD_ENV_NAMES, WORKER_SETTINGS, environment_names
from scripts.endpoint_requests import PASSED_THROUGH_ENV

ROOT = Path(__file__).resolve().parent.parent
# Documented, and read by others than the settings module: huggingface_hub (HF_TOKEN), the RunPod
# SDK (its API key, ping and pod id) and the platform itself (the start timeout).
READ_BY_OTHERS = {"HF_TOKEN", "RUNPOD_AI_API_KEY", "RUNPOD_WEBHOOK_PING", "RUNPOD_POD_ID", "RUNPOD_INIT_TIMEOUT"}


def environment_rows(path: str, heading: str) -> dict[str, list[str]]:
    """The table under `heading`: each variable named in a row's first cell, with that row's cells."""
    text = ROOT.joinpath(path).read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
            rows[name] = cells
    return rows


def test_the_contract_documents_exactly_what_the_worker_reads():
    documented = set(environment_rows("docs/CONTRACT.md", "## Environment"))
    read = set(environment_names())
    assert read - documented == set(), "read by the worker but not in docs/CONTRACT.md"
    assert documented - read <= READ_BY_OTHERS, "in docs/CONTRACT.md but read by nobody"


def test_the_readme_documents_every_setting_an_operator_sets():
    documented = set(environment_rows("README.md", "## Configuration (environment)"))
    assert set(environment_names()) - set(RUNPOD_ENV_NAMES) - {"RUNPOD_DEBUG_LEVEL"} <= documented
    assert documented - set(environment_names()) <= READ_BY_OTHERS


def test_the_tables_give_the_settings_own_defaults():
    tables = [environment_rows("docs/CONTRACT.md", "## Environment"),
              environment_rows("README.md", "## Configuration (environment)")]
    for setting in WORKER_SETTINGS:
        for rows in tables:
            default = rows[setting.env][1]
            if setting.kind is bool:
                assert default.startswith("off") and setting.default is False, setting.env
            elif setting.default is not None:
                number = re.match(r"[\d,]+", default)
                assert number is not None, (setting.env, default)
                if "MiB" in default.split("(")[0]:
                    assert int(number.group().replace(",", "")) * 1024 * 1024 == setting.default, setting.env
                else:
                    assert int(number.group().replace(",", "")) == setting.default, (setting.env, default)


def test_the_contract_names_what_the_deploy_tool_hands_on():
    contract = ROOT.joinpath("docs/CONTRACT.md").read_text()
    section = contract.split("## Environment", 1)[1].split("| variable |", 1)[0]
    handed_on = " ".join(section.split()).split("hands these on", 1)[1].split(";", 1)[0]
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", handed_on)) | set(re.findall(r"`(BUCKET)_\*`", handed_on))
    expected = {name for name in PASSED_THROUGH_ENV if not name.startswith("BUCKET_")} | {"BUCKET"}
    assert named == expected
    assert "Not handed on" not in contract
