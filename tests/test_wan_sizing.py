"""Output size rule: the reference's `get_size_less_than_area` over a table of portraits."""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

import pytest

from model.wan_s2v.sizing import output_size, video_size
from tests.wan_reference import reference_root

# (height, width) of portraits: phone, square, landscape, small, huge, odd, extreme strips
PORTRAITS = [
    (1920, 1080), (1080, 1920), (1024, 1024), (720, 1280), (1280, 720), (480, 832),
    (300, 300), (333, 517), (4000, 3000), (3000, 4000), (2160, 3840), (64, 64),
    (100, 5000), (5000, 100), (777, 555), (1023, 1025), (5, 7),
]
AREAS = [832 * 480, 1024 * 704, 1280 * 720, 640 * 640]


@pytest.mark.parametrize("max_area", AREAS)
@pytest.mark.parametrize("height,width", PORTRAITS)
def test_sizes_are_multiples_of_64_within_the_budget(height: int, width: int, max_area: int) -> None:
    out_height, out_width = output_size(height, width, max_area)
    assert out_height % 64 == 0 and out_width % 64 == 0
    assert out_height * out_width <= max_area


def test_known_sizes() -> None:
    assert output_size(1280, 720, 832 * 480) == (832, 448)  # portrait phone video, 480p budget
    assert output_size(1024, 1024, 832 * 480) == (576, 576)
    assert output_size(300, 300, 832 * 480) == (320, 320)  # inside the budget: padded up, not shrunk


@pytest.mark.parametrize("max_area", AREAS)
def test_table_matches_the_reference(max_area: int) -> None:
    reference = _reference_rule()
    for height, width in PORTRAITS:
        assert output_size(height, width, max_area) == reference(height, width, max_area), (height, width)


def _reference_rule() -> Callable[[int, int, int], tuple[int, int]]:
    """`WanS2V.get_size_less_than_area`, taken alone from speech2video.py.

    Building `WanS2V` needs a whole checkpoint and importing its module the video stack, but the
    method uses neither `self` nor anything beyond `math`.
    """
    source = (reference_root() / "wan" / "speech2video.py").read_text()
    method = next(
        node for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == "get_size_less_than_area"
    )
    namespace: dict = {"math": math}
    exec(compile(ast.Module(body=[method], type_ignores=[]), "speech2video.py", "exec"), namespace)
    rule = namespace["get_size_less_than_area"]
    return lambda height, width, area: rule(None, height, width, target_area=area)


@pytest.mark.parametrize("height, width, max_area", [
    (300, 300, 832 * 480), (700, 500, 832 * 480), (64, 64, 4096), (1080, 1920, 832 * 480), (4000, 3000, 1280 * 720),
])
def test_video_never_larger_than_the_portrait(height: int, width: int, max_area: int) -> None:
    out_height, out_width = video_size(height, width, max_area)
    assert out_height <= height and out_width <= width
    assert out_height % 64 == 0 and out_width % 64 == 0 and out_height * out_width <= max_area
    reference_height, reference_width = output_size(height, width, max_area)
    if reference_height <= height and reference_width <= width:
        assert (out_height, out_width) == (reference_height, reference_width), "large portraits: the reference's size"


def test_small_portrait_is_cropped_not_upscaled() -> None:
    assert output_size(300, 300, 832 * 480) == (320, 320)  # the reference pads up
    assert video_size(300, 300, 832 * 480) == (256, 256)
