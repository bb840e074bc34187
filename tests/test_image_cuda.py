"""The CUDA version of the image, in the one place it is recorded (scripts/endpoint_requests.py's
MIN_CUDA_VERSION), against what the image installs and what the endpoints and the Hub ask of hosts.

The image installs PyPI's torch (the Dockerfile names no other index), whose Linux wheel declares
the CUDA libraries it needs as requirements. One test reads them from PyPI through pip, reading
the wheel's metadata by HTTP range requests (pip's fast-deps) rather than downloading the wheel,
from pip's configured index; it skips when that index cannot give it. The others need no network.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts.endpoint_requests import MIN_CUDA_VERSION
from scripts.torch_pin import torch_requirement

ROOT = Path(__file__).resolve().parent.parent
# The image's Python (Ubuntu 24.04's python3) and platform (torch's Linux x86_64 wheels).
IMAGE_PYTHON = "3.12"
IMAGE_PLATFORM = "manylinux_2_28_x86_64"
# NVIDIA's minimum driver for each CUDA major release under minor version compatibility
# (docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html, table 1).
MINIMUM_DRIVER = {12: 525, 13: 580}


def major_minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def torch_wheel_requirements(tmp_path: Path) -> list[Requirement]:
    """What PyPI's Linux wheel of the pinned torch requires, as pip's installation report gives it."""
    # pip's own index settings: the package registry this machine reaches, and nothing else
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
               "--ignore-installed", "--no-deps", "--use-feature=fast-deps", "--only-binary=:all:",
               "--platform", IMAGE_PLATFORM, "--python-version", IMAGE_PYTHON, "--target", str(tmp_path / "target"),
               torch_requirement()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode and "fast-deps" in result.stderr:
        pytest.skip(f"this pip reads no wheel metadata without downloading the wheel: {result.stderr.strip()[-300:]}")
    if result.returncode and any(word in result.stderr for word in ("No matching distribution", "connection",
                                                                    "Network is unreachable", "resolve")):
        pytest.skip(f"the package index has no Linux wheel of {torch_requirement()} here: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    (torch,) = json.loads(result.stdout)["install"]
    assert torch["metadata"]["name"] == "torch"
    assert f"torch=={torch['metadata']['version']}" == torch_requirement()
    return [Requirement(text) for text in torch["metadata"]["requires_dist"]]


def test_the_pinned_torch_wheel_declares_the_recorded_cuda_version(tmp_path):
    linux = {"platform_system": "Linux", "sys_platform": "linux", "python_version": IMAGE_PYTHON, "extra": ""}
    required = [requirement for requirement in torch_wheel_requirements(tmp_path)
                if requirement.marker is None or requirement.marker.evaluate(linux)]
    (toolkit,) = [requirement for requirement in required if requirement.name == "cuda-toolkit"]
    (pin,) = toolkit.specifier
    assert pin.operator == "==", toolkit
    assert major_minor(pin.version) == major_minor(MIN_CUDA_VERSION), (
        f"{torch_requirement()}'s Linux wheel needs CUDA {pin.version}: set MIN_CUDA_VERSION in "
        "scripts/endpoint_requests.py, allowedCudaVersions in .runpod/hub.json and tests.json, and the README")
    # the libraries outside the toolkit are built for the same CUDA major release
    suffixed = [re.fullmatch(r"nvidia-.+-cu(\d+)", requirement.name) for requirement in required]
    majors = {int(match[1]) for match in suffixed if match}
    assert majors == {major_minor(MIN_CUDA_VERSION)[0]}


def test_the_hub_listing_allows_the_images_cuda_version_and_only_later_ones_of_its_release():
    for name in ("hub.json", "tests.json"):
        listing = json.loads(ROOT.joinpath(".runpod", name).read_text())
        config = listing["config"]
        allowed = [major_minor(version) for version in config["allowedCudaVersions"]]
        # an exact set on RunPod: the floor and each later minor release, in order
        floor = major_minor(MIN_CUDA_VERSION)
        assert allowed == [(floor[0], minor) for minor in range(floor[1], floor[1] + len(allowed))], name


def test_the_endpoints_ask_for_the_images_cuda_version_as_their_floor():
    from scripts.endpoint_requests import endpoint_update_body
    from scripts.runpod_endpoint import build_parser, spec_from_args

    spec = spec_from_args(build_parser().parse_args(["--name=th", "--image=docker.io/acme/th:0123abcd"]), {})
    gpu = endpoint_update_body(spec, "template-id")["gpu"]
    assert gpu["minCudaVersion"] == MIN_CUDA_VERSION and gpu["allowedCudaVersions"] == []


def test_the_readme_states_the_cuda_version_and_the_driver_it_needs():
    readme = " ".join(ROOT.joinpath("README.md").read_text().split())
    driver = MINIMUM_DRIVER[major_minor(MIN_CUDA_VERSION)[0]]
    assert f"the CUDA {MIN_CUDA_VERSION} libraries that wheel declares" in readme
    assert f"hosts with CUDA {MIN_CUDA_VERSION} or newer: an NVIDIA driver {driver} or newer" in readme
