"""InfiniteTalk's constants (model/infinitetalk/config.py) against the reference's own settings.

Every value on the reference side is read from its code at run time: `generate_infinitetalk.py`'s
argparse defaults and validation, its config module, `wan/multitalk.py`'s signatures and the
README's step-distilled command. Without INFINITETALK_REFERENCE_REPO these tests skip.
"""

from __future__ import annotations

import inspect
import warnings

import pytest

from model.infinitetalk import config
from tests.infinitetalk_reference import (
    infinitetalk_module,
    parsed_arguments,
    readme_lora_guidance,
    reference_fast_arguments,
    reference_run_arguments,
    requires_infinitetalk,
)

pytestmark = [
    requires_infinitetalk,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _default(function, name: str):
    return inspect.signature(function).parameters[name].default


def test_video_constants_are_the_reference_runs():
    arguments = reference_run_arguments()
    model_config = infinitetalk_module("wan.configs").WAN_CONFIGS[arguments.task]
    multitalk_utils = infinitetalk_module("wan.utils.multitalk_utils")
    assert config.FPS == _default(multitalk_utils.save_video_ffmpeg, "fps")
    assert config.CLIP_FRAMES == arguments.frame_num
    assert (config.CLIP_FRAMES - 1) % model_config.vae_stride[0] == 0
    assert config.MOTION_FRAMES == arguments.motion_frame
    assert config.MAX_FRAMES == arguments.max_frame_num
    assert config.VAE_STRIDE == tuple(model_config.vae_stride)
    assert config.PATCH_SIZE == tuple(model_config.patch_size)
    assert config.NUM_TRAIN_TIMESTEPS == model_config.num_train_timesteps
    assert config.TEXT_LEN == model_config.text_len
    assert config.NEGATIVE_PROMPT == model_config.sample_neg_prompt


def test_the_audio_window_is_the_models():
    model = infinitetalk_module("wan.modules.multitalk_model").WanModel
    assert config.AUDIO_WINDOW == _default(model.__init__, "audio_window")


def test_quality_sampling_is_the_scripts_default():
    arguments = reference_run_arguments()
    assert config.DEFAULT_SIZE_BUCKET == arguments.size
    assert config.SAMPLE_STEPS == arguments.sample_steps
    assert config.TEXT_GUIDE_SCALE == arguments.sample_text_guide_scale
    assert config.AUDIO_GUIDE_SCALE == arguments.sample_audio_guide_scale
    buckets = infinitetalk_module("wan.configs").SUPPORTED_SIZES[arguments.task]
    assert sorted(config.SAMPLE_SHIFT) == sorted(buckets)
    generate = infinitetalk_module("wan.multitalk").InfiniteTalkPipeline.generate_infinitetalk
    assert _default(generate, "size_buckget") in buckets
    for bucket in buckets:
        assert config.SAMPLE_SHIFT[bucket] == parsed_arguments(["--size", bucket]).sample_shift, bucket


def test_fast_sampling_is_the_readmes_step_distilled_setting():
    arguments, lightx2v_steps = reference_fast_arguments()
    assert config.FAST_SAMPLE_STEPS == lightx2v_steps
    assert config.FAST_SAMPLE_SHIFT == arguments.sample_shift
    assert config.FAST_TEXT_GUIDE_SCALE == arguments.sample_text_guide_scale
    assert config.FAST_AUDIO_GUIDE_SCALE == arguments.sample_audio_guide_scale
    assert [config.FAST_LORA_SCALE] == arguments.lora_scale
    # the prose recommendation and the command agree
    assert readme_lora_guidance() == {
        "sample_text_guide_scale": config.FAST_TEXT_GUIDE_SCALE,
        "sample_audio_guide_scale": config.FAST_AUDIO_GUIDE_SCALE,
    }


def test_the_two_speaker_layout_inset_is_the_pipelines():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate = infinitetalk_module("wan.multitalk").InfiniteTalkPipeline.generate_infinitetalk
    assert config.SPEAKER_INSET == _default(generate, "face_scale")
