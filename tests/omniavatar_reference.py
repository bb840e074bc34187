"""Run Omni-Avatar/OmniAvatar's own code on CPU in float32 for parity tests.

The checkout of https://github.com/Omni-Avatar/OmniAvatar is found through the environment
variable OMNIAVATAR_REFERENCE_REPO (pinned in reference_pins.toml); without it the tests that
need it skip. Nothing is copied from it: its files are executed from the checkout as
`reference_checkout.py` loads them, adapted at load time only:

- its package `OmniAvatar` is registered bare; xfuser (sequence parallelism, never used on one
  process) gets an inert stand-in;
- `OmniAvatar/utils/args_config.py` keeps the parsed command line in a module global `args`
  (None until `parse_args` runs), which `wan_video_dit.py` reads when a `WanModel` is built and
  run: the harness sets it to the run's settings (`use_audio`, `sp_size` 1);
- `scripts/inference.py` parses the command line when imported, so it is never imported: the
  statements a test needs (its size rules, its speech features) are cut out of its syntax tree
  and run on their own, with the names they read handed to them;
- its wav2vec2 subclass runs with eager attention (its forward sets `config.output_attentions`,
  which transformers 5 refuses under SDPA; the numbers are the same) and with the encoder keeping
  transformers 4's hidden states (`reference_harness.Transformers4Encoder`).

The run's settings are read from the reference's yaml at test time, never handed to both sides.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from tests.reference_checkout import ReferenceCheckout
from tests.reference_harness import (
    Transformers4Encoder,
    import_before_stand_ins,
    no_bytecode,
    randomize_,
    run_statements,
    stand_in_module_factory,
    statements_between,
)

REFERENCE_ENV = "OMNIAVATAR_REFERENCE_REPO"
INFERENCE_SCRIPT = "scripts/inference.py"


_stand_in_module = stand_in_module_factory("OmniAvatar")

_STAND_INS: dict[str, dict[str, Any]] = {
    "xfuser": {},
    "xfuser.core": {},
    "xfuser.core.distributed": {},
    # OmniAvatar/base.py imports GaussianBlur (for image helpers the harness never calls)
    "torchvision": {},
    "torchvision.transforms": {},
}


# Packages whose `__init__` runs: wan_video.py imports its prompter and offloading wrappers from them.
_RUN_INITS = ("OmniAvatar/prompters", "OmniAvatar/vram_management")


def _package_dirs(root: Path) -> list[Path]:
    top = root / "OmniAvatar"
    return [top, *sorted(
        path for path in top.rglob("*")
        if path.is_dir() and path.name != "__pycache__" and path.relative_to(root).as_posix() not in _RUN_INITS
    )]


@contextlib.contextmanager
def _importing() -> Iterator[None]:
    import_before_stand_ins()
    # it too probes for torchvision when it loads
    from transformers import AutoTokenizer  # noqa: F401

    with no_bytecode():
        yield


_CHECKOUT = ReferenceCheckout(
    pin="omniavatar",
    env=REFERENCE_ENV,
    what="OmniAvatar",
    package="OmniAvatar",
    marker="OmniAvatar/models/audio_pack.py",
    package_dirs=_package_dirs,
    stand_ins=_STAND_INS,
    stand_in_module=_stand_in_module,
    while_importing=_importing,
)
requires_omniavatar = _CHECKOUT.requires


def omniavatar_root() -> Path:
    """The checkout's root; skips the calling test when it is not configured or not OmniAvatar."""
    return _CHECKOUT.root()


def omniavatar_module(name: str) -> types.ModuleType:
    """Import `OmniAvatar.<name>` from the checkout (e.g. "models.audio_pack")."""
    return _CHECKOUT.module(name)


def reference_yaml(name: str = "inference.yaml") -> dict[str, Any]:
    """One of the reference's run configurations (`configs/<name>`), as its `parse_args` reads it."""
    with (omniavatar_root() / "configs" / name).open(encoding="utf-8") as file:
        return yaml.safe_load(file)


# --- scripts/inference.py, statement by statement -----------------------------------------------


def _inference_tree() -> tuple[ast.Module, str]:
    path = omniavatar_root() / INFERENCE_SCRIPT
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), str(path)


def _statements_between(first: str, last: str) -> tuple[list[ast.stmt], str]:
    """The statements of one block of the script from the one whose source starts with `first`
    to the one starting with `last`, both included."""
    tree, filename = _inference_tree()
    statements = statements_between(tree, first, last)
    if statements is None:
        raise RuntimeError(f"{INFERENCE_SCRIPT} no longer has a block from {first!r} to {last!r}")
    return statements, filename


def _function(name: str) -> Any:
    tree, filename = _inference_tree()
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name]
    if len(found) != 1:
        raise RuntimeError(f"{INFERENCE_SCRIPT} no longer defines one {name}()")
    return run_statements(found, filename, {})[name]


def reference_size(height: int, width: int, sizes: list[list[int]]) -> list[int]:
    """The script's `match_size`: the size it fits a `height` x `width` portrait to."""
    return _function("match_size")(sizes, height, width)


def reference_chunk_frames(size: list[int], max_tokens: int) -> int:
    """The video frames per chunk (`L`) the script computes for `size`."""
    statements, filename = _statements_between("L = int(args.max_tokens", "L = L // 4")
    namespace = {"args": types.SimpleNamespace(max_tokens=max_tokens), "select_size": size}
    return run_statements(statements, filename, namespace)["L"]


def reference_fixed_frames(overlap_frame: int, random_prefix_frames: bool) -> tuple[int, int]:
    """The script's (fixed_frame, first_fixed_frame) for an I2V run (the published models')."""
    statements, filename = _statements_between("if self.args.i2v:", "if self.args.i2v:")
    namespace = {
        "self": types.SimpleNamespace(args=types.SimpleNamespace(i2v=True, random_prefix_frames=random_prefix_frames)),
        "overlap_frame": overlap_frame,
    }
    namespace = run_statements(statements, filename, namespace)
    return namespace["fixed_frame"], namespace["first_fixed_frame"]


def reference_speech_encoder(wav2vec_folder: Path) -> Any:
    """The reference's `Wav2VecModel` loaded from `wav2vec_folder` as its pipeline loads it."""
    wav2vec = omniavatar_module("models.wav2vec")
    encoder = wav2vec.Wav2VecModel.from_pretrained(str(wav2vec_folder), local_files_only=True)
    encoder.config._attn_implementation = "eager"
    encoder.encoder = Transformers4Encoder(encoder.encoder)
    return encoder.eval()


def reference_speech_features(
    wav2vec_folder: Path, audio: np.ndarray, chunk: int, fixed_frame: int, first_fixed_frame: int,
    settings: dict[str, Any],
) -> tuple[torch.Tensor, int]:
    """The script's speech features of 16 kHz `audio` (silence already added, as its ffmpeg step
    does): its padding to whole chunks of `chunk` frames and its encoder. Returns
    (audio_embeddings [frames, channels], ori_audio_len)."""
    import math

    from transformers import Wav2Vec2FeatureExtractor

    statements, filename = _statements_between("input_values = np.squeeze(", "audio_embeddings = audio_embeddings.sq")
    pipeline = types.SimpleNamespace(
        wav_feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(str(wav2vec_folder)),
        audio_encoder=reference_speech_encoder(wav2vec_folder),
        args=types.SimpleNamespace(sample_rate=settings["sample_rate"], fps=settings["fps"]),
        device="cpu",
    )
    namespace = {
        "self": pipeline, "audio": audio, "np": np, "torch": torch, "F": torch.nn.functional, "math": math,
        "L": chunk, "fixed_frame": fixed_frame, "first_fixed_frame": first_fixed_frame,
    }
    namespace = run_statements(statements, filename, namespace)
    return namespace["audio_embeddings"], namespace["ori_audio_len"]


# --- the transformer --------------------------------------------------------------------------


def dit_module(**run_settings: Any) -> types.ModuleType:
    """`OmniAvatar.models.wan_video_dit` with its `args` set to a one-process run's settings."""
    module = omniavatar_module("models.wan_video_dit")
    # an argparse.Namespace, as `parse_args` leaves it: `WanModel` asks `'use_audio' in args`
    module.args = argparse.Namespace(**{"use_audio": True, "sp_size": 1, **run_settings})
    return module


def reference_transformer(arguments: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """The reference's `WanModel` (wan_video_dit.py) with audio, made with `arguments`, its weights
    drawn by `reference_harness.randomize_`, in float32, eval."""
    model = dit_module().WanModel(**arguments)
    randomize_(model, seed)
    return model.float().eval()


def reference_prediction(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One call of the reference model as its pipeline makes it (`WanVideoPipeline.log_video`):
    the latents, the condition `y` (portrait latents and mask), the text states and the speech rows."""
    with torch.no_grad():
        return model(
            inputs["latents"], timestep=inputs["timestep"], context=inputs["text"], y=inputs["condition"],
            audio_emb=inputs["speech"],
        )


def _method(class_name: str, name: str) -> Any:
    tree, filename = _inference_tree()
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    methods = [node for node in classes[0].body if isinstance(node, ast.FunctionDef) and node.name == name] if (
        len(classes) == 1) else []
    if len(methods) != 1:
        raise RuntimeError(f"{INFERENCE_SCRIPT} no longer defines one {class_name}.{name}()")
    from peft import LoraConfig, inject_adapter_in_model

    namespace = {
        "LoraConfig": LoraConfig, "inject_adapter_in_model": inject_adapter_in_model,
        "load_state_dict": omniavatar_module("utils.io_utils").load_state_dict,
    }
    return run_statements(methods, filename, namespace)[name]


def reference_add_lora(model: torch.nn.Module, settings: dict[str, Any], lora_path: Path | None) -> None:
    """The script's `add_lora_to_model` on `model` with the run's LoRA `settings` (lora_rank,
    lora_alpha, lora_target_modules, init_lora_weights: the published config.json's), loading
    `lora_path` as it loads `pytorch_model.pt`."""
    add_lora = _method("WanInferencePipeline", "add_lora_to_model")
    add_lora(
        types.SimpleNamespace(), model, lora_rank=settings["lora_rank"], lora_alpha=settings["lora_alpha"],
        lora_target_modules=settings["lora_target_modules"], init_lora_weights=settings["init_lora_weights"],
        pretrained_lora_path=None if lora_path is None else str(lora_path),
    )


def reference_log_video_default(name: str) -> Any:
    """A default argument of `WanVideoPipeline.log_video` (e.g. "sigma_shift")."""
    import inspect

    dit_module()
    pipeline = omniavatar_module("wan_video").WanVideoPipeline
    return inspect.signature(pipeline.log_video).parameters[name].default


def reference_chunk_latents(
    model: torch.nn.Module, given: torch.Tensor, given_frames: int, inputs: dict[str, torch.Tensor],
    negative_text: torch.Tensor, steps: int, scale: float, audio_scale: float, seed: int,
) -> torch.Tensor:
    """`WanVideoPipeline.log_video`'s latents for one chunk, with `model` as its dit, its
    scheduler as its constructor makes it, the prompts' states handed over (`encode_prompt`), and
    its noise drawn after `torch.manual_seed(seed)`; the VAE is left out (decoding returns the
    latents)."""
    dit_module()
    pipeline = omniavatar_module("wan_video").WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    pipeline.dit = model
    states = {"prompt": inputs["text"], "negative": negative_text}
    pipeline.encode_prompt = lambda prompt, positive=True: {"context": states[prompt]}
    pipeline.load_models_to_device = lambda names: None
    pipeline.decode_video = lambda latents, **tiling: latents
    torch.manual_seed(seed)
    _, _, latents = pipeline.log_video(
        given, "prompt", given_frames, {"y": inputs["condition"]}, {"audio_emb": inputs["speech"]}, "negative",
        cfg_scale=scale, audio_cfg_scale=audio_scale, num_inference_steps=steps, tea_cache_l1_thresh=0,
        progress_bar_cmd=lambda steps, disable=False: steps, return_latent=True,
    )
    return latents


def reference_chunk_speech(
    audio_embeddings: torch.Tensor, chunk: int, fixed_frame: int, first_fixed_frame: int,
) -> list[torch.Tensor]:
    """The speech rows the script hands to each chunk (`audio_emb["audio_emb"]`), its chunk
    count (`times`) computed as it computes it from the padded rows."""
    count_statements, filename = _statements_between("times = (seq_len - L", "if times * (L - fixed_frame)")
    namespace = run_statements(count_statements, filename, {
        "seq_len": audio_embeddings.shape[0], "L": chunk, "fixed_frame": fixed_frame,
        "first_fixed_frame": first_fixed_frame,
    })
    statements, filename = _statements_between("audio_emb = {}", "if audio_embeddings is not None:")
    latent_frames = (chunk + 3) // 4
    namespace.update({
        "torch": torch, "audio_embeddings": audio_embeddings,
        "audio_prefix": torch.zeros_like(audio_embeddings[:first_fixed_frame]),
        # the mask the loop also updates (not compared here)
        "image_emb": {"y": torch.ones(1, 2, latent_frames, 1, 1)}, "prefix_lat_frame": (3 + fixed_frame) // 4,
        "self": types.SimpleNamespace(device="cpu", dtype=audio_embeddings.dtype),
    })
    chunks = []
    for t in range(namespace["times"]):
        namespace["t"] = t
        namespace = run_statements(statements, filename, namespace)
        chunks.append(namespace["audio_emb"]["audio_emb"][0])
    return chunks


# --- the whole chunk loop (WanInferencePipeline.forward) --------------------------------------


def _script_definitions(names: tuple[str, ...], namespace: dict[str, Any]) -> dict[str, Any]:
    """The script's top-level functions and classes named `names`, defined in `namespace`."""
    tree, filename = _inference_tree()
    found = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names]
    if sorted(node.name for node in found) != sorted(names):
        raise RuntimeError(f"{INFERENCE_SCRIPT} no longer defines each of {names}")
    return run_statements(found, filename, namespace)


def reference_video(
    model: torch.nn.Module, vae: Any, wav2vec_folder: Path, portrait_path: Path, audio: np.ndarray,
    states: dict[str, torch.Tensor], settings: dict[str, Any], seed: int,
) -> torch.Tensor:
    """`WanInferencePipeline.forward`'s video [1, frames, 3, H, W] in [0, 1]: its size choice, its
    speech features and padding, its chunk loop with `WanVideoPipeline.log_video` driving `model`,
    on CPU in float32, after `torch.manual_seed(seed)`.

    `vae` (encode / decode of pixels in [-1, 1] and latents, as ours) stands in for the pipeline's
    (tiled) VAE, whose own parity is tested elsewhere; `states` are the prompts' umT5 states by
    prompt ("prompt", and the negative prompt's text); `audio` is 16 kHz with the silence already
    added (the script's ffmpeg step, librosa's load); `settings` are the run's (the reference's
    yaml with the test's overrides: max_tokens, overlap_frame, num_steps, image_sizes_720).
    The one torchvision step, the portrait's resize, must be a no-op: the portrait has a listed size.
    """
    from PIL import Image
    from transformers import Wav2Vec2FeatureExtractor

    dit_module()
    pipeline = omniavatar_module("wan_video").WanVideoPipeline(device="cpu", torch_dtype=torch.float32)
    pipeline.dit = model
    pipeline.encode_prompt = lambda prompt, positive=True: {"context": states[prompt]}
    pipeline.load_models_to_device = lambda names: None
    pipeline.encode_video = lambda video, **tiling: vae.encode(video)
    pipeline.decode_video = lambda latents, **tiling: vae.decode(latents)

    def resize(size: list[int]) -> Any:
        def same(image: torch.Tensor) -> torch.Tensor:
            if list(image.shape[-2:]) != list(size):
                raise AssertionError(f"the harness resizes nothing: a {list(image.shape[-2:])} portrait for {size}")
            return image
        return same

    run = types.SimpleNamespace(**{**settings, "i2v": True, "random_prefix_frames": True, "use_audio": True,
                                   "tea_cache_l1_thresh": 0})
    namespace: dict[str, Any] = {
        "torch": torch, "np": np, "math": __import__("math"), "F": torch.nn.functional, "args": run,
        "transforms": types.SimpleNamespace(Resize=lambda size: resize(size)),
        "librosa": types.SimpleNamespace(load=lambda path, sr: (audio, sr)),
        "nn": torch.nn,
    }
    _script_definitions(("match_size", "resize_pad"), namespace)
    forward = _method_in("WanInferencePipeline", "forward", namespace)

    def to_tensor(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)

    inference = types.SimpleNamespace(
        args=run, device="cpu", dtype=torch.float32, pipe=pipeline, transform=to_tensor,
        wav_feature_extractor=Wav2Vec2FeatureExtractor.from_pretrained(str(wav2vec_folder)),
        audio_encoder=reference_speech_encoder(wav2vec_folder),
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        return forward(inference, "prompt", image_path=str(portrait_path), audio_path="speech.wav")


def _method_in(class_name: str, name: str, namespace: dict[str, Any]) -> Any:
    tree, filename = _inference_tree()
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    methods = [node for node in classes[0].body if isinstance(node, ast.FunctionDef) and node.name == name] if (
        len(classes) == 1) else []
    if len(methods) != 1:
        raise RuntimeError(f"{INFERENCE_SCRIPT} no longer defines one {class_name}.{name}()")
    return run_statements(methods, filename, namespace)[name]
