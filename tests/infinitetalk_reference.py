"""Run MeiGen-AI/InfiniteTalk's own code on CPU in float32 for parity tests.

The checkout of https://github.com/MeiGen-AI/InfiniteTalk is found through the environment
variable INFINITETALK_REFERENCE_REPO (pinned in reference_pins.toml); without it the tests that
need it skip. Nothing is copied from it: its files are executed from the checkout as
`reference_checkout.py` loads them, adapted at load time only:

- its packages `wan` and `src` are registered bare (their `__init__` files import every pipeline),
  and `generate_infinitetalk.py` is executed as a module, so its argparse defaults, its size
  rules and its `get_embedding` (the speech features) are the ones it runs with;
- optional imports this environment lacks (xfuser, xformers, decord, librosa, the TTS stack...)
  get inert stand-ins; `xformers.ops.memory_efficient_attention` becomes PyTorch SDPA, and
  `flash_attention` is routed to `wan_reference.sdpa_flash_attention` (SDPA in the inputs' dtype);
- while its files are imported: `torch.compile`, which decorates `calculate_x_ref_attn_map`, is
  the identity (the CPU run must not compile); `inspect.ArgSpec` (imported, never used, by
  `wan/multitalk.py`; gone in Python 3.11) is `inspect.FullArgSpec`; `torch.cuda.current_device()`
  (a default argument in `wan/modules/t5.py`) is "cpu";
- `torch_gc` (it empties the CUDA cache between steps) does nothing.

The run's settings are read from the reference at test time (`reference_run_arguments`,
`reference_fast_arguments`), never handed to both sides.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import math
import re
import shlex
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import wan_reference
from tests.reference_checkout import EasyDict, ReferenceCheckout
from tests.reference_harness import (
    Transformers4Encoder,
    import_before_stand_ins,
    no_bytecode,
    randomize_,
    run_statements,
    stand_in_module_factory,
    statement_bodies,
    statements_between,
)

REFERENCE_ENV = "INFINITETALK_REFERENCE_REPO"
SCRIPT = "generate_infinitetalk"


_HARNESS = "InfiniteTalk"
_stand_in_module = stand_in_module_factory(_HARNESS)


def _memory_efficient_attention(q, k, v, attn_bias=None, op=None, scale=None):
    """xformers' [batch, tokens, heads, head_dim] attention as SDPA (only the bias-free call is used)."""
    if attn_bias is not None:
        raise NotImplementedError("the harness runs without sequence parallelism: no attention bias")
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
    )
    return out.transpose(1, 2)


class _Compose:
    """torchvision.transforms.Compose: the official `_clip` builds one; `CLIPModel.visual` applies
    only its last transform (`Normalize`) itself."""

    def __init__(self, transforms):
        self.transforms = list(transforms)


class _UnusedTransform:
    """A torchvision transform `_clip` builds and the harness path never applies."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} is a stand-in: the InfiniteTalk harness does not apply it")


class _Normalize:
    """torchvision.transforms.Normalize on tensors [..., channels, height, width]."""

    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean.to(tensor)[:, None, None]) / self.std.to(tensor)[:, None, None]


def _center_crop(tensor: torch.Tensor, size) -> torch.Tensor:
    """torchvision.transforms.functional.center_crop of a tensor [..., height, width] no smaller than `size`."""
    height, width = (size, size) if isinstance(size, int) else size
    top = int(round((tensor.shape[-2] - height) / 2.0))
    left = int(round((tensor.shape[-1] - width) / 2.0))
    if top < 0 or left < 0:
        raise ValueError("the harness's center_crop does not pad")
    return tensor[..., top : top + height, left : left + width]


_STAND_INS: dict[str, dict[str, Any]] = {
    "easydict": {"EasyDict": EasyDict},
    "xformers": {},
    "xformers.ops": {"memory_efficient_attention": _memory_efficient_attention},
    "xfuser": {},
    "xfuser.core": {},
    "xfuser.core.distributed": {},
    "torchvision": {},
    "torchvision.transforms": {
        "Compose": _Compose,
        "Normalize": _Normalize,
        "Resize": type("Resize", (_UnusedTransform,), {}),
        "ToTensor": type("ToTensor", (_UnusedTransform,), {}),
        "InterpolationMode": types.SimpleNamespace(BICUBIC="bicubic"),
    },
    "torchvision.transforms.functional": {"center_crop": _center_crop},
    "decord": {},
    "librosa": {},
    "pyloudnorm": {},
    "kokoro": {},
    "scenedetect": {},
    "moviepy": {},
    "moviepy.editor": {"__all__": []},
    "loguru": {},
    "optimum": {},
    "optimum.quanto": {},
    "optimum.quanto.nn": {},
    # src/vram_management/layers.py subclasses it
    "optimum.quanto.nn.qlinear": {"QLinear": type("QLinear", (torch.nn.Linear,), {})},
}


# Packages whose `__init__` runs: the script imports its config tables from `wan.configs`, and
# `wan/multitalk.py` its offloading wrappers from `src.vram_management`.
_RUN_INITS = ("wan/configs", "src/vram_management")


def _package_dirs(root: Path) -> list[Path]:
    # `src/` and `src/audio_analysis/` have no __init__.py (namespace packages)
    tops = [root / "wan", root / "src"]
    return tops + sorted(
        path
        for top in tops
        for path in top.rglob("*")
        if path.is_dir() and path.name != "__pycache__" and path.relative_to(root).as_posix() not in _RUN_INITS
    )


@contextlib.contextmanager
def _importing_without_compile() -> Iterator[None]:
    import_before_stand_ins()
    original = torch.compile

    def no_compile(function=None, *args, **kwargs):
        return function if function is not None else (lambda inner: inner)

    torch.compile = no_compile  # type: ignore[assignment]
    # t5.py evaluates torch.cuda.current_device() as a default argument when it is imported
    current_device = torch.cuda.current_device
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    # wan/multitalk.py imports (and never uses) inspect.ArgSpec, which Python 3.11 removed
    added_argspec = not hasattr(inspect, "ArgSpec")
    if added_argspec:
        inspect.ArgSpec = inspect.FullArgSpec  # type: ignore[attr-defined]
    try:
        with no_bytecode():
            yield
    finally:
        torch.compile = original  # type: ignore[assignment]
        torch.cuda.current_device = current_device  # type: ignore[assignment]
        if added_argspec:
            del inspect.ArgSpec  # type: ignore[attr-defined]


def _no_cuda_cache() -> None:
    """`torch_gc` (empties the CUDA cache, which needs CUDA) has nothing to do on the CPU."""


def _after_import(loaded: dict[str, types.ModuleType]) -> None:
    for module in loaded.values():
        if "torch_gc" in module.__dict__:
            module.torch_gc = _no_cuda_cache
    _route_attention(loaded)


def _route_attention(loaded: dict[str, types.ModuleType]) -> None:
    attention = loaded.get("wan.modules.attention")
    if attention is None:
        return
    original = attention.__dict__.setdefault("_harness_original", attention.__dict__["flash_attention"])
    for module in loaded.values():
        if module.__dict__.get("flash_attention") is original:
            module.flash_attention = wan_reference.sdpa_flash_attention


_CHECKOUT = ReferenceCheckout(
    pin="infinitetalk",
    env=REFERENCE_ENV,
    what="InfiniteTalk",
    package=("wan", "src"),
    marker="wan/modules/multitalk_model.py",
    package_dirs=_package_dirs,
    stand_ins=_STAND_INS,
    stand_in_module=_stand_in_module,
    while_importing=_importing_without_compile,
    after_import=_after_import,
)
requires_infinitetalk = _CHECKOUT.requires


def infinitetalk_root() -> Path:
    """The checkout's root; skips the calling test when it is not configured or not InfiniteTalk."""
    return _CHECKOUT.root()


def infinitetalk_module(full_name: str) -> types.ModuleType:
    """Import `full_name` (e.g. "wan.modules.multitalk_model", "src.audio_analysis.wav2vec2")."""
    return _CHECKOUT.import_module(full_name)


def generate_script() -> types.ModuleType:
    """`generate_infinitetalk.py`, the reference's command-line entry point, as a module."""
    return _CHECKOUT.script(SCRIPT)


def parsed_arguments(arguments: list[str]) -> Any:
    """The script's own `_parse_args` (argparse defaults, then `_validate_args`) on `arguments`.

    `--ckpt_dir` is required by its validation; its value is never read here.
    """
    script = generate_script()
    saved = sys.argv
    sys.argv = [f"{SCRIPT}.py", "--ckpt_dir", "unused", *arguments]
    try:
        return script._parse_args()
    finally:
        sys.argv = saved


def reference_run_arguments() -> Any:
    """The arguments the script runs with when only the checkpoints are named (its defaults:
    steps, shift for its default size, guidance scales, clip and motion frames...)."""
    return parsed_arguments([])


def reference_speech_features(wav2vec_folder: Path, samples) -> torch.Tensor:
    """The script's `get_embedding` on 16 kHz `samples`, with the encoder its `custom_init` loads
    from `wav2vec_folder`: [frames, layers, hidden].

    The encoder runs with eager attention: the reference's forward sets `config.output_attentions`,
    which transformers 5 refuses under SDPA (the numbers are the same).
    """
    script = generate_script()
    feature_extractor, audio_encoder = script.custom_init("cpu", str(wav2vec_folder))
    audio_encoder.config._attn_implementation = "eager"
    audio_encoder.encoder = Transformers4Encoder(audio_encoder.encoder)
    return script.get_embedding(samples, feature_extractor, audio_encoder)


def reference_transformer(arguments: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The reference's `WanModel` (multitalk_model.py) made with `arguments`, its weights drawn by
    `reference_harness.randomize_`, in float32, eval, TeaCache off."""
    model = infinitetalk_module("wan.modules.multitalk_model").WanModel(**arguments)
    randomize_(model, seed)
    model.disable_teacache()
    return model.float().eval()


def reference_prediction(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    timestep: float,
    regions: torch.Tensor | None = None,
) -> torch.Tensor:
    """One call of the reference model as `generate_infinitetalk` makes it: the latents, the I2V
    condition `y`, the text states, the CLIP features, the audio windows and the speaker masks at
    the latent size (one speaker: three masks of ones, as the pipeline builds them)."""
    latents, condition = inputs["latents"], inputs["condition"]
    _, frames, height, width = latents.shape
    if regions is None:
        regions = torch.ones(3, height, width)
    patch = model.patch_size
    seq_len = frames * (height // patch[1]) * (width // patch[2])
    with torch.no_grad():
        return model(
            [latents], t=torch.tensor([timestep]), context=[inputs["text"]], seq_len=seq_len,
            clip_fea=inputs["image"], y=condition[None], audio=inputs["audio"], ref_target_masks=regions,
        )


def reference_clip_visual(arguments: dict[str, Any], frames: torch.Tensor, seed: int = 0):
    """The official image features: `clip_xlm_roberta_vit_h_14` (wan/modules/clip.py) built with
    `arguments` over its defaults, weights drawn by `randomize_`, and its `CLIPModel.visual` on
    `frames` [batch, 3, 1, height, width] in [-1, 1]. Returns (features, the CLIP's state dict)."""
    clip = infinitetalk_module("wan.modules.clip")
    model, transforms = clip.clip_xlm_roberta_vit_h_14(
        pretrained=False, return_transforms=True, return_tokenizer=False, dtype=torch.float32, device="cpu",
        **arguments,
    )
    randomize_(model.eval(), seed)
    # `CLIPModel.__init__` loads the published checkpoint; `visual` needs only these
    wrapper = clip.CLIPModel.__new__(clip.CLIPModel)
    wrapper.model, wrapper.transforms, wrapper.dtype = model, transforms, torch.float32
    with torch.no_grad():
        return wrapper.visual(frames), model.state_dict()


# --- statements of `generate_infinitetalk` ------------------------------------------------------
# The sampler's schedule, guidance mix and update are inline in InfiniteTalkPipeline's
# `generate_infinitetalk`; the harness executes those statements of its source as they are.


def _generate_source() -> tuple[ast.Module, str]:
    generate = infinitetalk_module("wan.multitalk").InfiniteTalkPipeline.generate_infinitetalk
    filename = inspect.getsourcefile(generate) or "wan/multitalk.py"
    return ast.parse(textwrap.dedent(inspect.getsource(generate))), filename


def _assigns(statement: ast.stmt, name: str) -> bool:
    return isinstance(statement, ast.Assign) and any(
        isinstance(target, ast.Name) and target.id == name for target in statement.targets
    )


def _pipeline_self() -> types.SimpleNamespace:
    """What the statements read from the pipeline: its `__init__` defaults, on the CPU."""
    init = inspect.signature(infinitetalk_module("wan.multitalk").InfiniteTalkPipeline.__init__).parameters
    return types.SimpleNamespace(
        num_timesteps=init["num_timesteps"].default,
        use_timestep_transform=init["use_timestep_transform"].default,
        device=torch.device("cpu"),
    )


def reference_schedule(steps: int, shift: float) -> list[torch.Tensor]:
    """The `timesteps` list `generate_infinitetalk` builds for `steps` and `shift` (one [1] tensor
    per step, and the final 0)."""
    import numpy as np

    tree, filename = _generate_source()
    for body in statement_bodies(tree):
        starts = [index for index, statement in enumerate(body) if _assigns(statement, "timesteps")]
        if starts:
            stop = next(index for index, statement in enumerate(body) if _assigns(statement, "latent"))
            statements = body[starts[0] : stop]
            break
    else:
        raise RuntimeError("generate_infinitetalk no longer builds `timesteps` as the harness expects")
    namespace = {
        "np": np, "torch": torch, "self": _pipeline_self(), "sampling_steps": steps, "shift": shift,
        "timestep_transform": infinitetalk_module("wan.multitalk").timestep_transform,
    }
    return run_statements(statements, filename, namespace)["timesteps"]


def reference_guidance(predictions: dict[str, torch.Tensor], text_scale: float, audio_scale: float) -> torch.Tensor:
    """The vanilla (not APG) guidance mix of `generate_infinitetalk`, run on `predictions` named as
    it names them (noise_pred_cond, noise_pred_drop_text, noise_pred_uncond, noise_pred_drop_audio);
    a pass it needs and `predictions` lacks is a NameError."""
    tree, filename = _generate_source()
    mixes = [
        node for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "math.isclose(text_guide_scale, 1.0)"
        and _assigns(node.body[0], "noise_pred") and "adaptive_projected_guidance" not in ast.unparse(node)
    ]
    if len(mixes) != 1:
        raise RuntimeError(f"expected one vanilla guidance mix in generate_infinitetalk, found {len(mixes)}")
    namespace = {"math": math, "text_guide_scale": text_scale, "audio_guide_scale": audio_scale, **predictions}
    return run_statements([mixes[0]], filename, namespace)["noise_pred"]


def reference_euler_update(latent: torch.Tensor, noise_pred: torch.Tensor, timesteps: list, step: int) -> torch.Tensor:
    """The loop's update of `latent` from the mixed `noise_pred` at step `step` of `timesteps`."""
    tree, filename = _generate_source()
    for body in statement_bodies(tree):
        starts = [
            index for index, statement in enumerate(body) if ast.unparse(statement) == "noise_pred = -noise_pred"
        ]
        if starts:
            statements = body[starts[0] : starts[0] + 4]
            break
    else:
        raise RuntimeError("generate_infinitetalk no longer negates `noise_pred` as the harness expects")
    if not _assigns(statements[-1], "latent"):
        raise RuntimeError("generate_infinitetalk's update is no longer the 4 statements the harness runs")
    namespace = {
        "noise_pred": noise_pred, "latent": latent, "timesteps": timesteps, "i": step, "self": _pipeline_self(),
    }
    return run_statements(statements, filename, namespace)["latent"]


def _statements_between(first: str, last: str) -> tuple[list[ast.stmt], str]:
    """The statements of one block of `generate_infinitetalk` from the one whose source starts with
    `first` to the one starting with `last`, both included."""
    tree, filename = _generate_source()
    statements = statements_between(tree, first, last)
    if statements is None:
        raise RuntimeError(f"generate_infinitetalk no longer has a block from {first!r} to {last!r}")
    return statements, filename


def reference_bucket_size(height: int, width: int, bucket: str) -> tuple[int, int]:
    """The (height, width) `generate_infinitetalk` picks for a `height` x `width` first frame."""
    statements, filename = _statements_between("bucket_config_module = ", "target_h, target_w = ")
    namespace = {
        # its `importlib.import_module("wan.utils.multitalk_utils")`, from the checkout
        "importlib": types.SimpleNamespace(import_module=infinitetalk_module), "size_buckget": bucket,
        "cond_image": types.SimpleNamespace(height=height, width=width),
    }
    namespace = run_statements(statements, filename, namespace)
    return namespace["target_h"], namespace["target_w"]


def reference_speaker_masks(
    portrait_size: tuple[int, int], video_size: tuple[int, int], latent_size: tuple[int, int],
    boxes: dict[str, list[float]] | None = None,
) -> torch.Tensor:
    """The `ref_target_masks` `generate_infinitetalk` builds for two speakers: [3, latent h, latent w]."""
    statements, filename = _statements_between("human_masks = []", "ref_target_masks = ref_target_masks.float()")
    input_data: dict[str, Any] = {"cond_audio": {"person1": "1.pt", "person2": "2.pt"}}
    if boxes is not None:
        input_data["bbox"] = boxes
    generate = infinitetalk_module("wan.multitalk").InfiniteTalkPipeline.generate_infinitetalk
    namespace = {
        "torch": torch, "F": torch.nn.functional, "HUMAN_NUMBER": 2, "input_data": input_data,
        "src_h": portrait_size[0], "src_w": portrait_size[1], "target_h": video_size[0], "target_w": video_size[1],
        "face_scale": inspect.signature(generate).parameters["face_scale"].default,
        "y": torch.zeros(1, 1, 1, *latent_size), "self": _pipeline_self(),
        "resize_and_centercrop": infinitetalk_module("wan.multitalk").resize_and_centercrop,
    }
    return run_statements(statements, filename, namespace)["ref_target_masks"]


def reference_cover_and_crop(image, size: tuple[int, int]) -> torch.Tensor:
    """`resize_and_centercrop` (wan/multitalk.py) of a PIL image: [1, 3, 1, height, width] uint8."""
    return infinitetalk_module("wan.multitalk").resize_and_centercrop(image, size)


def reference_add_noise(original: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """`InfiniteTalkPipeline.add_noise` (how the motion frames are noised each step)."""
    pipeline = infinitetalk_module("wan.multitalk").InfiniteTalkPipeline
    return pipeline.add_noise(_pipeline_self(), original, noise, timestep)


class _ReferenceVAE:
    """`WanVAE`'s list interface (encode/decode one [C, T, H, W] video per item) over a VAE of
    ours (`WanVideoVAE`, itself compared with the reference's elsewhere), shared by both sides."""

    def __init__(self, vae):
        self.vae = vae

    def encode(self, videos):
        return [self.vae.encode(video[None])[0] for video in videos]

    def decode(self, latents):
        return [self.vae.decode(latent[None])[0] for latent in latents]


class _ReferenceClip:
    """`CLIPModel.visual` on [1, 3, 1, H, W] frames through an image encoder shared by both sides
    (the official CLIP is compared on its own in test_infinitetalk_image_encoder.py)."""

    def __init__(self, image_features):
        self.image_features = image_features
        self.model = torch.nn.Identity()

    def visual(self, frames):
        return self.image_features(frames[:, :, 0])


class _ReferenceText:
    """The umT5 encoder's place: the states of the prompt and of the negative prompt, given."""

    def __init__(self, states: dict[str, torch.Tensor]):
        self.states = states
        self.model = torch.nn.Identity()

    def __call__(self, prompts, device):
        return [self.states[prompt] for prompt in prompts]


def reference_generate(
    model: torch.nn.Module,
    vae,
    image_features,
    prompt_states: tuple[torch.Tensor, torch.Tensor],
    condition_path: Path,
    speech_paths: list[Path],
    video_size: tuple[int, int],
    arguments: Any,
    video_frames: list | None = None,
) -> torch.Tensor:
    """`InfiniteTalkPipeline.generate_infinitetalk` run as the script calls it with `arguments`
    (`reference_run_arguments()` or `reference_fast_arguments()[0]`, frame counts changed by the
    caller), on the reference `model` and our `vae`, image features and prompt states [tokens,
    dim] (prompt, negative prompt). `condition_path` is an image (image mode); `speech_paths` the
    `.pt` features per speaker. Returns the video [3, frames, H, W] in [-1, 1].

    Adapted for the CPU and tiny sizes: the size bucket table is one entry, `video_size`; the
    codec probe (ffprobe) answers "h264"; in video mode (`video_frames`, PIL images) the frame
    reader returns those frames (the last one past the end, as the reference's does).
    """
    multitalk = infinitetalk_module("wan.multitalk")
    generate = multitalk.InfiniteTalkPipeline.generate_infinitetalk
    bucket = arguments.size
    table = {"1.00": [video_size]}
    buckets = types.SimpleNamespace(ASPECT_RATIO_627=table, ASPECT_RATIO_960=table)
    namespace = dict(generate.__globals__)
    namespace["importlib"] = types.SimpleNamespace(import_module=lambda name: buckets)
    namespace["get_video_codec"] = lambda path: "h264"
    if video_frames is not None:
        namespace["extract_specific_frames"] = lambda path, index: video_frames[min(index, len(video_frames) - 1)]
    function = types.FunctionType(generate.__code__, namespace, generate.__name__, generate.__defaults__)
    prompt, negative = prompt_states
    init = inspect.signature(multitalk.InfiniteTalkPipeline.__init__).parameters
    pipeline = types.SimpleNamespace(
        model=model, vae=_ReferenceVAE(vae), clip=_ReferenceClip(image_features),
        text_encoder=_ReferenceText({"prompt": prompt, "negative": negative}), t5_cpu=False,
        device=torch.device("cpu"), param_dtype=torch.float32, vae_stride=(4, 8, 8), patch_size=model.patch_size,
        sp_size=1, rank=0, vram_management=False, sample_neg_prompt="negative",
        num_timesteps=init["num_timesteps"].default, use_timestep_transform=init["use_timestep_transform"].default,
    )
    pipeline.add_noise = lambda *args: multitalk.InfiniteTalkPipeline.add_noise(pipeline, *args)
    input_data = {
        "prompt": "prompt", "cond_video": str(condition_path),
        "cond_audio": {f"person{index + 1}": str(path) for index, path in enumerate(speech_paths)},
    }
    extra = types.SimpleNamespace(use_teacache=arguments.use_teacache, use_apg=arguments.use_apg)
    deterministic = torch.backends.cudnn.deterministic
    try:
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(None):
            return function(
                pipeline, input_data, size_buckget=bucket, motion_frame=arguments.motion_frame,
                frame_num=arguments.frame_num, shift=arguments.sample_shift, sampling_steps=arguments.sample_steps,
                text_guide_scale=arguments.sample_text_guide_scale,
                audio_guide_scale=arguments.sample_audio_guide_scale, n_prompt="", seed=arguments.base_seed,
                offload_model=False,
                max_frames_num=arguments.frame_num if arguments.mode == "clip" else arguments.max_frame_num,
                progress=False, color_correction_strength=arguments.color_correction_strength, extra_args=extra,
            )
    finally:
        torch.backends.cudnn.deterministic = deterministic


def reference_match_colours(video: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
    """`match_and_blend_colors` (wan/utils/multitalk_utils.py) on [3, frames, H, W] and [3, H, W]."""
    utils = infinitetalk_module("wan.utils.multitalk_utils")
    return utils.match_and_blend_colors(video[None], reference[None, :, None], strength)[0]


def readme_text() -> str:
    readme = infinitetalk_root() / "README.md"
    if not readme.is_file():
        pytest.skip(f"{readme} is missing: the fast setting is documented there")
    return readme.read_text(encoding="utf-8")


def reference_fast_arguments() -> tuple[Any, int]:
    """The README's step-distilled run: the arguments of its LoRA command (`--lora_dir`, guidance,
    shift, LoRA scale) parsed by the script, and the steps the README says lightx2v needs."""
    readme = readme_text()
    commands = [
        block for block in re.findall(r"python generate_infinitetalk\.py(.*?)```", readme, re.DOTALL)
        if "--lora_dir" in block
    ]
    if len(commands) != 1:
        raise RuntimeError(f"expected one LoRA command in InfiniteTalk's README, found {len(commands)}")
    words = shlex.split(commands[0].replace("\\\n", " "))
    # the paths name files this machine does not have; the parser only keeps them
    arguments = parsed_arguments(words)
    steps = re.search(r"lightx2v\]\([^)]*\) requires only (\d+) steps", readme)
    if steps is None:
        raise RuntimeError("InfiniteTalk's README no longer says how many steps lightx2v needs")
    return arguments, int(steps.group(1))


def readme_lora_guidance() -> dict[str, float]:
    """The guidance scales the README recommends "after applying LoRA", by argument name."""
    found = {}
    for name, value in re.findall(
        r"-(sample_(?:text|audio)_guide_scale)\S*\s.*?After applying LoRA, the recommended value is ([0-9.]+)",
        readme_text(),
    ):
        found[name] = float(value)
    return found


__all__ = [
    "REFERENCE_ENV",
    "generate_script",
    "infinitetalk_module",
    "infinitetalk_root",
    "parsed_arguments",
    "readme_lora_guidance",
    "reference_bucket_size",
    "reference_clip_visual",
    "reference_cover_and_crop",
    "reference_add_noise",
    "reference_euler_update",
    "reference_fast_arguments",
    "reference_generate",
    "reference_match_colours",
    "reference_guidance",
    "reference_prediction",
    "reference_run_arguments",
    "reference_schedule",
    "reference_speaker_masks",
    "reference_speech_features",
    "reference_transformer",
    "requires_infinitetalk",
]
