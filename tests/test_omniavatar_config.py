"""OmniAvatar's constants and layout rules against the reference's yaml and scripts/inference.py."""

from __future__ import annotations

import ast

import pytest

from model.omniavatar import config, layout
from tests.omniavatar_reference import (
    omniavatar_root,
    reference_chunk_frames,
    reference_fixed_frames,
    reference_size,
    reference_yaml,
    requires_omniavatar,
)

RUN_CONFIGS = ("inference.yaml", "inference_1.3B.yaml")


@requires_omniavatar
@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_run_settings_are_the_reference_yaml(name: str) -> None:
    settings = reference_yaml(name)
    assert settings["fps"] == config.FPS
    assert settings["sample_rate"] == config.SAMPLE_RATE
    assert settings["silence_duration_s"] == config.LEADING_SILENCE_SECONDS
    assert settings["max_tokens"] == config.MAX_TOKENS
    assert settings["overlap_frame"] == config.OVERLAP_FRAMES
    assert settings["num_steps"] == config.SAMPLE_STEPS
    assert settings["guidance_scale"] == config.GUIDANCE_SCALE
    assert settings["audio_scale"] == config.AUDIO_GUIDANCE_SCALE
    assert settings["seed"] == config.SEED
    assert settings["negative_prompt"] == config.NEGATIVE_PROMPT
    assert settings["max_hw"] == config.DEFAULT_MAX_HW
    for max_hw, sizes in config.SIZES_BY_MAX_HW.items():
        assert [tuple(size) for size in settings[f"image_sizes_{max_hw}"]] == list(sizes)


def _from_civitai_configs() -> list[dict]:
    path = omniavatar_root() / "OmniAvatar/models/wan_video_dit.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    method = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "from_civitai")
    return [
        ast.literal_eval(node.value)
        for node in ast.walk(method)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and node.value.keys
    ]


@requires_omniavatar
def test_transformer_sizes_are_the_reference_t2v_ones() -> None:
    t2v = {(found["dim"], found["num_layers"]): found for found in _from_civitai_configs()
           if not found["has_image_input"]}
    for size in config.TRANSFORMERS.values():
        found = t2v[(size.dim, size.num_layers)]
        assert (found["ffn_dim"], found["num_heads"]) == (size.ffn_dim, size.num_heads)
        assert found["freq_dim"] == size.freq_dim
        assert (found["text_dim"], found["out_dim"], found["eps"]) == (size.text_dim, size.out_dim, size.eps)
        assert tuple(found["patch_size"]) == size.patch_size
        assert found["in_dim"] == size.out_dim  # the T2V base; the published model widens it to IN_CHANNELS


@requires_omniavatar
@pytest.mark.parametrize(
    ("height", "width"), [(512, 512), (480, 832), (832, 480), (1080, 1920), (300, 301), (720, 400), (1000, 999)]
)
def test_size_choice_is_the_reference_one(height: int, width: int) -> None:
    settings = reference_yaml()
    for max_hw in config.SIZES_BY_MAX_HW:
        sizes = settings[f"image_sizes_{max_hw}"]
        assert layout.pick_size(height, width, config.SIZES_BY_MAX_HW[max_hw]) == tuple(
            reference_size(height, width, sizes)
        )


@requires_omniavatar
@pytest.mark.parametrize(
    "sizes", [[[400, 400], [1000, 1000]], [[400, 400], [800, 800], [1000, 1000]], [[720, 400], [360, 200], [1080, 600]]]
)
def test_ties_between_sizes_go_as_in_the_reference(sizes: list[list[int]]) -> None:
    for height, width in [(700, 700), (710, 700), (540, 300), (900, 500)]:
        assert layout.pick_size(height, width, sizes) == tuple(reference_size(height, width, sizes))


@requires_omniavatar
def test_chunk_frames_are_the_reference_ones() -> None:
    settings = reference_yaml()
    sizes = [tuple(size) for max_hw in config.SIZES_BY_MAX_HW for size in settings[f"image_sizes_{max_hw}"]]
    for size in [*sizes, (512, 512), (480, 832), (256, 256)]:
        for max_tokens in (settings["max_tokens"], 10000, 12345):
            assert layout.chunk_frames(*size, max_tokens=max_tokens) == reference_chunk_frames(list(size), max_tokens)


@requires_omniavatar
def test_first_chunk_starts_from_one_frame_and_later_ones_from_the_overlap() -> None:
    fixed, first = reference_fixed_frames(config.OVERLAP_FRAMES, random_prefix_frames=True)
    assert (fixed, first) == (config.OVERLAP_FRAMES, layout.FIRST_CHUNK_GIVEN_FRAMES)


def test_padded_speech_fills_whole_chunks() -> None:
    chunk, overlap = 21, 5
    assert layout.padded_speech_frames(1, chunk, overlap) == 20
    assert layout.padded_speech_frames(20, chunk, overlap) == 20
    assert layout.padded_speech_frames(21, chunk, overlap) == 36
    assert layout.padded_speech_frames(36, chunk, overlap) == 36
    assert layout.padded_speech_frames(37, chunk, overlap) == 52
    with pytest.raises(ValueError, match="overlap"):
        layout.padded_speech_frames(10, 5, 5)


def test_chunk_frames_refuses_a_size_too_big_for_the_tokens() -> None:
    with pytest.raises(ValueError, match="tokens"):
        layout.chunk_frames(4096, 4096, max_tokens=1000)


def test_audio_blocks_are_those_after_the_first_two_up_to_the_middle() -> None:
    assert list(config.audio_blocks(40)) == list(range(2, 21))
    assert len(config.audio_blocks(30)) == 30 // 2 - 1


@requires_omniavatar
@pytest.mark.parametrize(("chunk", "covered"), [(21, 5), (21, 20), (21, 21), (21, 45), (81, 300), (17, 100)])
def test_each_chunk_gets_the_reference_speech_rows(chunk: int, covered: int) -> None:
    import torch

    from tests.omniavatar_reference import reference_chunk_speech

    fixed, first = reference_fixed_frames(config.OVERLAP_FRAMES, random_prefix_frames=True)
    padded = layout.padded_speech_frames(covered, chunk, fixed)
    rows = torch.arange(1, padded + 1, dtype=torch.float32)[:, None].repeat(1, 3)
    expected = reference_chunk_speech(rows, chunk, fixed, first)
    assert layout.chunk_count(padded, chunk, fixed) == len(expected)
    for index, rows_of_chunk in enumerate(expected):
        assert torch.equal(layout.chunk_speech_rows(rows, chunk, index, fixed), rows_of_chunk), index
    with pytest.raises(ValueError, match="needs speech rows"):
        layout.chunk_speech_rows(rows, chunk, len(expected), fixed)
