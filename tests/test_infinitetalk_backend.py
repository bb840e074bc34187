"""InfiniteTalk's backend parts on their own: the declaration against the pipeline, the video size,
the speaker boxes, and the lightx2v LoRA against the reference's merge rule (`wan/wan_lora.py`)."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from model.infinitetalk.backend import video_size
from model.infinitetalk.config import CLIP_FRAMES, FPS, MOTION_FRAMES
from model.infinitetalk.declaration import DECLARATION
from model.infinitetalk.lora import attach_lightx2v_lora
from model.infinitetalk.options import InfiniteTalkOptions, check_boxes
from model.infinitetalk.pipeline import plan_clips
from model.options import InvalidOptionError
from tests.infinitetalk_tiny_models import (
    lightx2v_lora,
    published_transformer_state_dict,
    tiny_infinitetalk_transformer,
    transformer_inputs,
)


def test_the_declared_batches_and_rate_are_the_pipelines():
    plan = plan_clips(500)
    later = plan.starts[1] - plan.starts[0]
    for mode in DECLARATION.modes:
        assert DECLARATION.frame_batches[mode] == (CLIP_FRAMES, later) == (81, 81 - MOTION_FRAMES)
        assert DECLARATION.frame_rate(mode) == FPS == 25


def test_the_video_is_the_references_bucket_size_scaled_down_to_the_area():
    # the default area keeps the 480 bucket's own sizes
    assert video_size(720, 1280, DECLARATION.default_max_area("quality")) == ("infinitetalk-480", 448, 896)
    assert video_size(1000, 1000, 640 * 640) == ("infinitetalk-480", 640, 640)
    # a smaller area scales that size down, in multiples of 16
    assert video_size(1000, 1000, 64 * 64) == ("infinitetalk-480", 64, 64)
    bucket, height, width = video_size(720, 1280, 400 * 300)
    assert bucket == "infinitetalk-480" and height * width <= 400 * 300 and height % 16 == width % 16 == 0
    # an area the 720 bucket's size fits takes it
    assert video_size(1000, 1000, 960 * 960) == ("infinitetalk-720", 960, 960)


def test_speaker_boxes_read_x_across_and_are_refused_naming_the_field():
    options = InfiniteTalkOptions.parse({"speaker_boxes": "0,10,32,64; 32,10,64,64"}, "quality", "infinitetalk")
    assert options.boxes() == ((0, 10, 32, 64), (32, 10, 64, 64))
    assert InfiniteTalkOptions().boxes() is None
    check_boxes(options.boxes(), speakers=2, width=64, height=64)
    for text, says in [("1,2,3;4,5,6,7", "box 1 ('1,2,3') is not four numbers"),
                       ("a,b,c,d;1,2,3,4", "is not four numbers"), ("0,0,9,9;-1,0,5,5", "at least 0")]:
        with pytest.raises(InvalidOptionError, match=f"^speaker_boxes must be .*{re.escape(says)}") as refused:
            InfiniteTalkOptions(speaker_boxes=text).boxes()
        assert refused.value.field == "speaker_boxes"
    with pytest.raises(InvalidOptionError, match="box 2 reaches past the 48x64 portrait"):
        check_boxes(options.boxes(), speakers=2, width=48, height=64)
    with pytest.raises(InvalidOptionError, match="this job has one speech"):
        check_boxes(options.boxes(), speakers=1, width=64, height=64)


def _merged_as_the_reference(model, lora: dict[str, torch.Tensor], scale: float):
    """The reference's rule, applied to a copy's published weights: W += scale B @ A for each pair,
    and += scale * diff for each diff or diff_b; `.alpha` is not read."""
    from model.infinitetalk.convert_transformer import convert_transformer_state_dict

    published = published_transformer_state_dict(model)
    for key, tensor in lora.items():
        name = key.removeprefix("diffusion_model.")
        if name.endswith(".lora_down.weight"):
            weight = name.replace(".lora_down.weight", ".weight")
            up = lora[key.replace("lora_down", "lora_up")]
            published[weight] = published[weight] + scale * up @ tensor
        elif name.endswith(".diff_b"):
            published[name.replace(".diff_b", ".bias")] += scale * tensor
        elif name.endswith(".diff"):
            published[name.replace(".diff", ".weight")] += scale * tensor
    merged = tiny_infinitetalk_transformer()
    merged.load_state_dict(convert_transformer_state_dict(published))
    return merged


def _predict(model, inputs) -> torch.Tensor:
    hidden = torch.cat([inputs["latents"], inputs["condition"]])[None]
    return model(hidden, torch.tensor([500.0]), inputs["text"][None], inputs["image"], inputs["audio"]).sample


def test_the_lora_while_active_predicts_as_the_references_merge_and_not_otherwise(tmp_path):
    model = tiny_infinitetalk_transformer()
    lora = lightx2v_lora(published_transformer_state_dict(model))
    path = tmp_path / "lightx2v.safetensors"
    save_file(lora, str(path))
    inputs = _inputs()
    with torch.no_grad():
        base = _predict(model, inputs)
        adapter = attach_lightx2v_lora(model, path, scale=0.5)
        assert not isinstance(adapter, Exception), adapter
        assert adapter.summary.layers == 20 and adapter.summary.replaced_tensors == 1 and adapter.path == path
        with adapter.active():
            adapted = _predict(model, inputs)
        after = _predict(model, inputs)
        reference = _predict(_merged_as_the_reference(tiny_infinitetalk_transformer(), lora, 0.5), inputs)
    torch.testing.assert_close(adapted, reference, rtol=1e-4, atol=1e-4)
    assert (adapted - base).abs().mean() > 1e-3
    assert torch.equal(after, base)


def _inputs() -> dict[str, torch.Tensor]:
    inputs = transformer_inputs(latent_frames=2, height=4, width=4)
    generator = torch.Generator().manual_seed(1)
    inputs["audio"] = torch.randn(1, 5, 5, 3, 32, generator=generator)
    return inputs


def test_a_lora_that_does_not_fit_leaves_fast_unavailable_and_the_model_as_it_was(tmp_path):
    model = tiny_infinitetalk_transformer()
    published = published_transformer_state_dict(model)
    path = tmp_path / "bad.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.diff_b": torch.ones(7),
               **{key: value for key, value in lightx2v_lora(published).items() if "blocks.1" in key}}, str(path))
    result = attach_lightx2v_lora(model, path)
    assert isinstance(result, Exception)
    assert f"the step-distillation LoRA of the fast mode at {path} does not fit the model" in str(result)
    assert "diffusion_model.blocks.0.self_attn.q.diff_b has shape (7,)" in str(result)
    assert not any(name.startswith("lora_") for module in model.modules() for name in module._buffers)
    (tmp_path / "html.safetensors").write_bytes(b"<html>429</html>")
    assert "not a readable safetensors file" in str(attach_lightx2v_lora(model, tmp_path / "html.safetensors"))
