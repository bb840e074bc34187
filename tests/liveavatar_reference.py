"""Run Live Avatar's causal (streaming) Wan2.2-S2V model on CPU in float32 for parity tests.

The checkout of https://github.com/Alibaba-Quark/LiveAvatar is found through the environment
variable LIVEAVATAR_REFERENCE_REPO; without it (or when it is not a checkout) the tests that need
it skip. Nothing is copied from it: its files are executed from the checkout (loaded as
`reference_checkout.py` loads the official Wan2.2 repository too), and adapted at load time only:

- its package `__init__` files import every pipeline, trainer and detector (decord, torchvision,
  librosa, flash_attn, SAM2...), so the packages are registered bare and only the requested files
  run; optional imports missing here get inert stand-ins (see `_STAND_INS`);
- ENABLE_COMPILE is forced off while its files are imported, so `conditional_compile` leaves
  every function as it is (no torch.compile);
- its `attention`/`flash_attention` (cuDNN or flash-attn kernels) are routed to
  `wan_reference.sdpa_flash_attention`: PyTorch SDPA in the inputs' dtype, keys past `k_lens`
  masked;
- `CausalWanModel_S2V.__init__` moves its rope table to "cuda": construction maps that device
  to the CPU;
- `_forward_inference` draws `random.randint(4, 30)` on every call to place the reference
  image's rope position; `fixed_ref_rope_offsets` fixes (and records) those draws;
- librosa (not installed here) reads the speech file: a stand-in reads 16 kHz mono files only.

The configuration is the reference's own, read at run time (`reference_fast_settings`): the
pipeline made by its own `WanS2V.__init__` from the s2v-14B config (fps, frames per block, motion
frames, audio window), its speech encoder (`AudioEncoder`, on the tiny wav2vec2), the arguments
`infinite_inference_single_gpu.sh` runs it with over the inference script's argparse defaults
(clip length, steps, solver, size), the training config it names (LoRA rank and alpha), and the
literals of the calls that fix the Euler shift and the reference image's rope range. Changed for
a CPU run in float32 only: the config's bfloat16 `param_dtype` and `convert_model_dtype`.

Left as the reference does it (an equal model must do the same to match it closely):
- the cross-attention input is `norm3(x.to(torch.bfloat16))`: the residual stream is rounded to
  bfloat16 before that LayerNorm, even in a float32 run;
- `rope_precompute` (wan_2_2/modules/s2v/s2v_utils.py) builds the rope table in complex32
  (float16 cos/sin), so every rotary factor carries float16 rounding (~5e-4).

The tiny model has the same weights as our `WanS2VTransformer3DModel` (renamed with
`wan_tiny_models.official_transformer_state_dict`), so outputs can be compared one to one.

    from tests.liveavatar_reference import requires_liveavatar, reference_causal_model, ...
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import os
import random
import shlex
import sys
import textwrap
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import wan_reference
from tests.reference_checkout import EasyDict, ReferenceCheckout
from tests.reference_harness import Unavailable, stand_in_module_factory
from tests.wan_tiny_models import official_transformer_state_dict

REFERENCE_ENV = "LIVEAVATAR_REFERENCE_REPO"
# The harness's own block-level sizes (tests/test_liveavatar_reference_harness.py checks them
# against `reference_fast_settings`).
MOTION_FRAMES = (73, 19)  # video frames of motion context, and their latent frames
FRAMES_PER_BLOCK = 3  # latent frames denoised together (`num_frames_per_block` in the config)
NUM_WAV2VEC_LAYERS = 25  # CausalAudioEncoder's layer mix is fixed at 25 hidden states
REF_ROPE_OFFSET_RANGE = (4, 30)  # `random.randint(4, 30)` in `_forward_inference`
# How the reference is run: its single-GPU script, the inference script it starts, and the config
# module behind that script's `--task s2v-14B` (configs/__init__.py's WAN_CONFIGS["s2v-14B"]).
SINGLE_GPU_SCRIPT = "infinite_inference_single_gpu.sh"
INFERENCE_SCRIPT = "minimal_inference/s2v_streaming_interact.py"
S2V_CONFIG_MODULE = "models.wan.wan_2_2.configs.wan_s2v_14B_modified"


# --- loading the checkout --------------------------------------------------------------------


def liveavatar_root() -> Path:
    """The checkout's root; skips the calling test when it is not configured or not Live Avatar."""
    return _CHECKOUT.root()


def liveavatar_module(name: str) -> types.ModuleType:
    """Import `liveavatar.<name>` (e.g. "models.wan.causal_model_s2v") from the checkout."""
    return _CHECKOUT.module(name)


@contextlib.contextmanager
def _importing_without_compile_or_cuda() -> Iterator[None]:
    saved_env = os.environ.get("ENABLE_COMPILE")
    saved_cache_limit = torch._dynamo.config.cache_size_limit
    saved_current_device = torch.cuda.current_device
    os.environ["ENABLE_COMPILE"] = "false"  # read once, when inference_utils.py is imported
    # t5.py evaluates torch.cuda.current_device() as a default argument when it is imported.
    torch.cuda.current_device = lambda: "cpu"
    try:
        with contextlib.redirect_stdout(None):  # inference_utils prints "COMPILE: False"
            yield
    finally:
        if saved_env is None:
            os.environ.pop("ENABLE_COMPILE", None)
        else:
            os.environ["ENABLE_COMPILE"] = saved_env
        torch._dynamo.config.cache_size_limit = saved_cache_limit  # inference_utils raises it
        torch.cuda.current_device = saved_current_device


def _after_import(loaded: dict[str, types.ModuleType]) -> None:
    compile_switch = loaded.get("liveavatar.models.wan.inference_utils")
    if compile_switch is not None and compile_switch.COMPILE:
        raise RuntimeError("Live Avatar's inference_utils was imported with ENABLE_COMPILE on")
    _route_attention(loaded)


def _package_dirs(root: Path) -> list[Path]:
    # Every folder: `liveavatar/` and `liveavatar/utils/` have no __init__.py (namespace packages).
    return [root / "liveavatar"] + sorted(
        path for path in (root / "liveavatar").rglob("*") if path.is_dir() and path.name != "__pycache__"
    )


class _ResizeExact:
    """torchvision.transforms.Resize(size) for images already at the size: identity, else refuses.

    The pipeline resizes the reference image's short side to min(H, W) and centre-crops to (H, W);
    callers of `reference_generate` pass an image of exactly (H, W), where both are the identity.
    """

    def __init__(self, size):
        self.size = size

    def __call__(self, image):
        if min(image.size) != self.size:
            raise ValueError(f"pass a reference image of the generation size (short side {self.size})")
        return image


class _CenterCropExact:
    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, image):
        if (image.size[1], image.size[0]) != self.size:
            raise ValueError(f"pass a reference image of the generation size {self.size}")
        return image


class _ToTensor:
    def __call__(self, image):
        import numpy as np

        array = np.asarray(image, dtype=np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


_HARNESS = "Live Avatar"
_stand_in_module = stand_in_module_factory(_HARNESS)


# Packages that Live Avatar's files import at top level and that this environment may lack. Only
# the pipeline file (`reference_generate`) needs more than easydict; nothing here is on the
# numerical path of the transformer.
def _read_16k_wav(path, sr=None, **kwargs):
    """librosa.load for a 16 kHz mono file: its samples as float32, never resampled."""
    import soundfile

    samples, rate = soundfile.read(path, dtype="float32")
    if samples.ndim != 1 or (sr is not None and rate != sr) or kwargs:
        raise ValueError(f"the harness's librosa.load reads 16 kHz mono files as they are, not {path}")
    return samples, rate


_STAND_INS: dict[str, dict[str, Any]] = {
    "easydict": {"EasyDict": EasyDict},
    "decord": {"VideoReader": Unavailable("decord.VideoReader", _HARNESS)},
    "librosa": {"load": _read_16k_wav},
    "imageio": {},
    "torchvision": {},
    "torchvision.transforms": {"Resize": _ResizeExact, "CenterCrop": _CenterCropExact, "ToTensor": _ToTensor},
    "torchvision.transforms.functional": {},
}


def _sdpa_attention(*args, fa_version: int | None = None, **kwargs) -> torch.Tensor:
    """Live Avatar's `attention`: the official `flash_attention`'s arguments, `version` spelt `fa_version`."""
    return wan_reference.sdpa_flash_attention(*args, **kwargs)


def _route_attention(loaded: dict[str, types.ModuleType]) -> None:
    """Every loaded module's `flash_attention`/`attention` (imported from attention.py) -> SDPA."""
    kernels = loaded.get("liveavatar.models.wan.wan_2_2.modules.attention")
    if kernels is None:
        return
    replacements = {"flash_attention": wan_reference.sdpa_flash_attention, "attention": _sdpa_attention}
    originals = kernels.__dict__.setdefault(
        "_harness_originals", {name: kernels.__dict__[name] for name in replacements}
    )
    for module in loaded.values():
        for name, replacement in replacements.items():
            if module.__dict__.get(name) is originals[name]:
                setattr(module, name, replacement)


def _caller_globals() -> dict:
    """The globals of the nearest caller outside this file (the patches here may wrap each other)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals is globals():
        frame = frame.f_back
    return frame.f_globals if frame is not None else {}


def _names_cuda(device) -> bool:
    return (isinstance(device, str) and device.startswith("cuda")) or (
        isinstance(device, torch.device) and device.type == "cuda"
    )


@contextlib.contextmanager
def _cuda_is_cpu(cls: type = torch.Tensor) -> Iterator[None]:
    """`cls.to("cuda...")` (Tensor or nn.Module; a device positional or keyword) stays on the CPU."""
    original = cls.to

    def to(self, *args, **kwargs):
        args = tuple("cpu" if _names_cuda(arg) else arg for arg in args)
        if _names_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return original(self, *args, **kwargs)

    own = "to" in cls.__dict__
    cls.to = to
    try:
        yield
    finally:
        if own:
            cls.to = original
        else:  # torch.Tensor inherits `to` from torch._C.TensorBase
            del cls.to


_CHECKOUT = ReferenceCheckout(
    pin="liveavatar",
    env=REFERENCE_ENV,
    what="Live Avatar",
    package="liveavatar",
    marker="liveavatar/models/wan/causal_model_s2v.py",
    package_dirs=_package_dirs,
    stand_ins=_STAND_INS,
    stand_in_module=_stand_in_module,
    while_importing=_importing_without_compile_or_cuda,
    after_import=_after_import,
)
requires_liveavatar = _CHECKOUT.requires
# For a test module that runs the reference: skipped without it, and without the reference's own
# deprecation noise (torch.cuda.amp.autocast, complex32 rope tables...).
LIVEAVATAR_TEST_MARKS = [
    requires_liveavatar,
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental"),
    pytest.mark.filterwarnings("ignore:CUDA is not available"),
    pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'"),
]


# --- the rope offset drawn per call ----------------------------------------------------------


class RefRopeOffsets(list):
    """The values `_forward_inference`'s `random.randint(4, 30)` returned, in call order."""


@contextlib.contextmanager
def fixed_ref_rope_offsets(values: int | Iterable[int]) -> Iterator[RefRopeOffsets]:
    """Fix what `random.randint(4, 30)` returns inside `CausalWanModel_S2V._forward_inference`.

    `values`: one int for every call, or a sequence used one per call (running out is an error).
    Only the draws made by causal_model_s2v.py are replaced; other users of `random` are left
    alone. Yields the list of values actually used, in call order.

    The reference image's rope frame in block starting at latent frame f0 is
    max(30, f0 + value): the value only matters once f0 + value > 30.
    """
    model_globals = liveavatar_module("models.wan.causal_model_s2v").__dict__
    if isinstance(values, int):
        constant = values
        values = iter(lambda: constant, None)
    iterator = iter(values)
    low, high = REF_ROPE_OFFSET_RANGE

    def next_value() -> int:
        try:
            value = int(next(iterator))
        except StopIteration:
            raise RuntimeError("fixed_ref_rope_offsets ran out of values") from None
        if not low <= value <= high:
            raise ValueError(f"the reference draws its offset from [{low}, {high}], got {value}")
        return value

    used = RefRopeOffsets()
    original = random.randint

    def randint(a: int, b: int) -> int:
        if _caller_globals() is model_globals and (a, b) == REF_ROPE_OFFSET_RANGE:
            value = next_value()
            used.append(value)
            return value
        return original(a, b)

    random.randint = randint
    try:
        yield used
    finally:
        random.randint = original


# --- the model -------------------------------------------------------------------------------


def reference_config(our_transformer) -> dict[str, Any]:
    """`CausalWanModel_S2V` keyword arguments equal to our transformer's configuration."""
    config = our_transformer.config
    if float(config.rope_theta) != 10000.0:
        raise ValueError("the reference's rope tables use theta=10000")
    if config.num_audio_layers != NUM_WAV2VEC_LAYERS:
        raise ValueError(f"the reference mixes exactly {NUM_WAV2VEC_LAYERS} wav2vec2 layers")
    if not config.zero_timestep:
        raise ValueError("the causal reference requires zero_timestep=True")
    return {
        "cond_dim": config.pose_channels,
        "audio_dim": config.audio_dim,
        "num_audio_token": config.num_audio_tokens,
        "enable_adain": config.audio_adaptive_norm,
        "adain_mode": "attn_norm",
        "audio_inject_layers": list(config.audio_inject_layers),
        "zero_init": False,
        "zero_timestep": True,
        "enable_motioner": False,
        "add_last_motion": True,
        "enable_framepack": True,
        "framepack_drop_mode": "padd",
        "model_type": "s2v",
        "patch_size": tuple(config.patch_size),
        "text_len": config.text_len,
        "in_dim": config.in_channels,
        "dim": config.num_attention_heads * config.attention_head_dim,
        "ffn_dim": config.ffn_dim,
        "freq_dim": config.freq_dim,
        "text_dim": config.text_dim,
        "out_dim": config.out_channels,
        "num_heads": config.num_attention_heads,
        "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm,
        "eps": config.eps,
    }


def sharpen_attention(our_transformer, scale: float = 1.5, seed: int = 0):
    """Give `our_transformer`'s q/k RMSNorm weights `scale * (1 + 0.1 * noise)`, in place.

    `wan_tiny_models.tiny_transformer_from_official_config` draws every weight from N(0, 0.05),
    norms included, so attention logits are ~1e-3 and every attention is nearly uniform: rope
    positions (and the reference image's rope offset) barely change the output (~1e-6). With
    these weights the logits are O(1). Returns the transformer.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in our_transformer.named_parameters():
            if name.endswith(("norm_q.weight", "norm_k.weight")):
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(scale * (1.0 + 0.1 * noise))
    return our_transformer


def reference_causal_model(our_transformer) -> torch.nn.Module:
    """Live Avatar's `CausalWanModel_S2V` with `our_transformer`'s weights, on CPU in float32, eval."""
    causal = liveavatar_module("models.wan.causal_model_s2v")
    torch.manual_seed(0)  # the constructor's random init is overwritten; keep it reproducible
    with _cuda_is_cpu():
        model = causal.CausalWanModel_S2V(**reference_config(our_transformer))
    model.load_state_dict(official_transformer_state_dict(our_transformer), strict=True)
    model.num_frame_per_block = FRAMES_PER_BLOCK  # as the pipeline sets it (training mask only)
    return model.float().eval()


def cond_cache_tokens(tokens_per_frame: int) -> int:
    """Tokens the sink prefill caches: the reference image's frame, then the frame-packed motion.

    The ref frame and the last motion frame at full resolution (patch 1x2x2), the 2 frames
    before it in 2x4x4 patches, the 16 before those in 4x8x8 patches:
    tokens_per_frame * (1 + 1 + 1/4 + 1/4) (2640 at 704x384; the pipeline allocates 2800).
    """
    if tokens_per_frame % 16:
        raise ValueError("frame packing needs latent heights and widths divisible by 8")
    return tokens_per_frame * 5 // 2


def new_reference_caches(
    model: torch.nn.Module,
    num_steps: int,
    frames_per_cache: int,
    tokens_per_frame: int,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
) -> list[list[dict[str, torch.Tensor]]]:
    """KV caches laid out as `WanS2V._initialize_kv_cache` makes them, at the model's sizes.

    One cache per denoising step index (the pipeline's `kv_cache1[str(i + 1)]`), each a list of
    one dict per layer: "k"/"v" [batch, frames_per_cache * tokens_per_frame, heads, head_dim]
    (the pipeline: one clip of latent frames) and "cond_k"/"cond_v"/"cond_end", the condition
    cache, the same tensors in every step's cache (the pipeline's `shared_cond_cache`).
    """
    heads, head_dim = model.num_heads, model.dim // model.num_heads
    size = frames_per_cache * tokens_per_frame
    cond_size = cond_cache_tokens(tokens_per_frame)
    shared = [
        {
            "cond_k": torch.zeros([batch_size, cond_size, heads, head_dim], dtype=dtype),
            "cond_v": torch.zeros([batch_size, cond_size, heads, head_dim], dtype=dtype),
            "cond_end": torch.tensor([0], dtype=torch.long),
        }
        for _ in range(model.num_layers)
    ]
    return [
        [
            {
                "k": torch.zeros([batch_size, size, heads, head_dim], dtype=dtype),
                "v": torch.zeros([batch_size, size, heads, head_dim], dtype=dtype),
                **shared[layer],
            }
            for layer in range(model.num_layers)
        ]
        for _ in range(num_steps)
    ]


def _crossattn_caches(model: torch.nn.Module) -> list[dict[str, Any]]:
    # Passed by the pipeline and never read by the causal S2V blocks.
    return [{"k": None, "v": None, "is_init": False} for _ in range(model.num_layers)]


def _context_list(context: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(context, torch.Tensor):
        return list(context) if context.dim() == 3 else [context]
    return list(context)


def _frame_seqlen(model: torch.nn.Module, height: int, width: int) -> int:
    _, ph, pw = model.patch_size
    return (height // ph) * (width // pw)


def reference_prefill(
    model: torch.nn.Module,
    caches: Sequence[Sequence[dict[str, torch.Tensor]]],
    context: torch.Tensor | Sequence[torch.Tensor],
    ref_latents: torch.Tensor,
    motion_latents: torch.Tensor,
    *,
    frames_per_block: int = FRAMES_PER_BLOCK,
    motion_frames: Sequence[int] = MOTION_FRAMES,
    drop_motion_frames: bool = False,
) -> None:
    """The pipeline's sink call: fills the condition cache shared by `caches` (all step caches).

    As `WanS2V.generate` makes it for clip 0: t=0, sink_flag=True, block_index 0
    (current_start=0). It caches, per layer, the un-roped keys and the values of the reference
    image's tokens followed by the frame-packed motion tokens. The pipeline repeats it for every
    step cache, writing the same shared tensors; once is the same.

    context: [1, L, text_dim] (or a list of [L, text_dim]); ref_latents: [1, C, 1, H, W];
    motion_latents: [1, C, motion_frames[1], H, W].
    """
    height, width = ref_latents.shape[-2:]
    block = torch.zeros(model.in_dim, frames_per_block, height, width)
    timestep = torch.zeros([1, frames_per_block])
    frame_seqlen = _frame_seqlen(model, height, width)
    with torch.no_grad(), _sink_noise_width(model):
        model(
            [block],
            t=timestep,
            context=_context_list(context),
            seq_len=None,
            cond_states=torch.zeros(1, model.in_dim, frames_per_block, height, width),
            motion_latents=motion_latents,
            ref_latents=ref_latents,
            audio_input=None,
            motion_frames=list(motion_frames),
            drop_motion_frames=drop_motion_frames,
            sink_flag=True,
            kv_cache=list(caches[0]),
            crossattn_cache=_crossattn_caches(model),
            current_start=0,
            current_end=frames_per_block * frame_seqlen,
        )


@contextlib.contextmanager
def _sink_noise_width(model: torch.nn.Module) -> Iterator[None]:
    """`_forward_sink` builds its (empty, 0-frame) noisy part as zeros [1, 5120, 0, h, w]: the
    14B's width written out. Give that one call the model's width so that it concatenates."""
    model_globals = liveavatar_module("models.wan.causal_model_s2v").__dict__
    original = torch.zeros
    full_width = 5120

    def zeros(*args, **kwargs):
        shape = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else None
        if (
            shape is not None
            and len(shape) == 5
            and shape[1] == full_width
            and shape[2] == 0
            and _caller_globals() is model_globals
        ):
            args = ([shape[0], model.dim, *shape[2:]],)
        return original(*args, **kwargs)

    torch.zeros = zeros
    try:
        yield
    finally:
        torch.zeros = original


def reference_block(
    model: torch.nn.Module,
    cache: Sequence[dict[str, torch.Tensor]],
    block_latents: torch.Tensor,
    t: float | torch.Tensor,
    context: torch.Tensor | Sequence[torch.Tensor],
    audio_slice: torch.Tensor,
    ref_latents: torch.Tensor,
    motion_latents: torch.Tensor,
    current_start: int,
    current_end: int | None = None,
    *,
    pose_latents: torch.Tensor | None = None,
    motion_frames: Sequence[int] = MOTION_FRAMES,
    drop_motion_frames: bool = False,
) -> torch.Tensor:
    """One denoising step of one block, as the pipeline calls it; returns the flow prediction.

    cache: the step's cache (`caches[step_index]`); its K/V at [current_start, +block tokens)
    (modulo the cache size) are overwritten with this call's keys and values.
    block_latents: [1, C, F, H, W] (F = frames per block); t: the scheduler's timestep (a number,
    a 0-d tensor, or [1, F]); context: [1, L, text_dim]; audio_slice: [1, 25, audio_dim, 4 * F]
    (the block's video frames of wav2vec2 features, `audio_emb[..., 12 * b : 12 * (b + 1)]`);
    current_start: the block's first token in the whole stream, in tokens
    ((clip * blocks_per_clip + block) * F * H/2 * W/2); pose_latents: [1, C, F, H, W], zeros
    when None (the pipeline's default). ref/motion latents only feed the prefill; the call reads
    their shapes. Returns [1, C_out, F, H, W].
    """
    if block_latents.dim() != 5 or block_latents.shape[0] != 1:
        raise ValueError("block_latents: [1, C, F, H, W]")
    frames, height, width = block_latents.shape[2:]
    timestep = torch.as_tensor(t, dtype=torch.float32)
    if timestep.dim() < 2:
        timestep = timestep.reshape(1, -1).expand(1, frames).clone()
    if pose_latents is None:
        pose_latents = torch.zeros_like(block_latents)
    if current_end is None:
        current_end = current_start + frames * _frame_seqlen(model, height, width)
    with torch.no_grad():
        out = model(
            [block_latents[0]],
            t=timestep,
            context=_context_list(context),
            seq_len=None,
            cond_states=pose_latents,
            motion_latents=motion_latents,
            ref_latents=ref_latents,
            audio_input=audio_slice,
            motion_frames=list(motion_frames),
            drop_motion_frames=drop_motion_frames,
            kv_cache=list(cache),
            crossattn_cache=_crossattn_caches(model),
            current_start=current_start,
            current_end=current_end,
            mask=None,
        )
    return torch.stack(out)


def reference_scheduler(sampling_steps: int):
    """The pipeline's sampler: the FlowMatchEulerDiscreteScheduler `generate` makes for "euler",
    with the shift it writes there (3: its `shift` argument is not used) and the config's
    training timesteps (1000); for 4 steps the timesteps are [1000, 857.69, 602.15, 8.93]."""
    pipeline_module = liveavatar_module("models.wan.causal_s2v_pipeline")
    ((_, keywords),) = literal_call_arguments(pipeline_module.WanS2V.generate, "FlowMatchEulerDiscreteScheduler")
    scheduler = pipeline_module.FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=reference_s2v_config().num_train_timesteps, shift=keywords["shift"]
    )
    scheduler.set_timesteps(sampling_steps, device="cpu")
    return scheduler


def reference_clip(
    model: torch.nn.Module,
    caches: Sequence[Sequence[dict[str, torch.Tensor]]],
    noise: torch.Tensor,
    context: torch.Tensor | Sequence[torch.Tensor],
    audio: torch.Tensor,
    ref_latents: torch.Tensor,
    motion_latents: torch.Tensor,
    *,
    clip_index: int = 0,
    blocks_per_clip: int | None = None,
    pose_latents: torch.Tensor | None = None,
    frames_per_block: int = FRAMES_PER_BLOCK,
) -> torch.Tensor:
    """`WanS2V.generate`'s block loop for one clip (after `reference_prefill`): the denoised latents.

    noise: [1, C, F, H, W], the clip's initial noise, F a multiple of `frames_per_block`;
    audio: [1, 25, audio_dim, 4 * F], the clip's wav2vec2 features (`audio_emb[..., clip
    frames]`); caches: `new_reference_caches(model, len(timesteps), ...)`, one per step index.
    Block b is denoised with Euler steps over the scheduler's timesteps; step i runs on
    caches[i]. current_start counts tokens over the whole stream: clip_index * blocks_per_clip
    blocks (default: the blocks of this clip) come before. Returns [1, C, F, H, W].
    """
    frames, height, width = noise.shape[2:]
    if frames % frames_per_block:
        raise ValueError(f"a clip has a multiple of {frames_per_block} latent frames")
    num_blocks = frames // frames_per_block
    blocks_per_clip = num_blocks if blocks_per_clip is None else blocks_per_clip
    frame_seqlen = _frame_seqlen(model, height, width)
    scheduler = reference_scheduler(len(caches))
    output = torch.zeros_like(noise)
    for block in range(num_blocks):
        frame_slice = slice(block * frames_per_block, (block + 1) * frames_per_block)
        latents = noise[:, :, frame_slice]
        audio_slice = audio[..., block * frames_per_block * 4 : (block + 1) * frames_per_block * 4]
        pose = None if pose_latents is None else pose_latents[:, :, frame_slice]
        start = (clip_index * blocks_per_clip + block) * frames_per_block * frame_seqlen
        scheduler._step_index = 0  # the pipeline: dist.get_rank() on one GPU
        scheduler._begin_index = 0
        for step, t in enumerate(scheduler.timesteps):
            prediction = reference_block(
                model, caches[step], latents, t, context, audio_slice, ref_latents, motion_latents,
                start, start + frames_per_block * frame_seqlen, pose_latents=pose,
            )
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
        output[:, :, frame_slice] = latents
    return output


# --- the reference's own configuration -------------------------------------------------------


def reference_run_arguments() -> dict[str, Any]:
    """The arguments of Live Avatar's single-GPU run, by argparse name: the inference script's
    argparse defaults, overridden by the flags `infinite_inference_single_gpu.sh` passes (as the
    shell hands them over: strings, True for a bare flag)."""
    root = liveavatar_root()
    arguments = _argparse_defaults(root / INFERENCE_SCRIPT)
    words = shlex.split((root / SINGLE_GPU_SCRIPT).read_text().replace("\\\n", " "), comments=True)
    words = words[words.index(INFERENCE_SCRIPT) + 1 :]
    for index, word in enumerate(words):
        if word.startswith("--"):
            value = words[index + 1] if index + 1 < len(words) and not words[index + 1].startswith("--") else True
            arguments[word[2:].replace("-", "_")] = value
    return arguments


def _argparse_defaults(script: Path) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flag = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            default = next((keyword.value for keyword in node.keywords if keyword.arg == "default"), None)
            if isinstance(flag, str) and flag.startswith("--"):
                defaults[flag[2:].replace("-", "_")] = ast.literal_eval(default) if default is not None else None
    return defaults


def literal_call_arguments(function: Callable, callee: str) -> list[tuple[tuple, dict[str, Any]]]:
    """The literal arguments of each call to `callee` (a name, or the last part of a dotted one)
    in the source of `function`; arguments that are not literals are left out."""
    calls = []
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(function)))):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name == callee:
                literal = [arg.value for arg in node.args if isinstance(arg, ast.Constant)]
                keywords = {kw.arg: kw.value.value for kw in node.keywords if isinstance(kw.value, ast.Constant)}
                calls.append((tuple(literal), keywords))
    return calls


def reference_s2v_config() -> EasyDict:
    """The s2v-14B config the single-GPU script runs (`--task s2v-14B`)."""
    return liveavatar_module(S2V_CONFIG_MODULE).s2v_14B


@dataclasses.dataclass(frozen=True)
class ReferenceFastSettings:
    """What Live Avatar's single-GPU run uses, each read from where the reference takes it."""

    fps: int  # WanS2V.fps, the config's sample_fps: the speech each frame carries
    latent_frames_per_block: int  # WanS2V.num_frames_per_block
    clip_frames: int  # the script's --infer_frames: video frames per clip
    motion_frames: int  # WanS2V.motion_frames (the config's transformer.motion_frames)
    audio_window: int  # WanS2V.audio_sample_m: feature columns taken either side of a frame's
    speech_feature_rate: int  # AudioEncoder.video_rate: wav2vec2's features are resampled to it
    sampling_steps: int  # the script's --sample_steps
    solver: str  # the script's --sample_solver
    guide_scale: float  # the script's --sample_guide_scale
    shift: float  # the Euler scheduler `generate` makes for that solver
    num_train_timesteps: int  # WanS2V.num_train_timesteps
    max_area: int  # the script's --size, as an area
    lora_rank: int  # the training config the script names (--training_config)
    lora_alpha: float
    ref_rope_offsets: tuple[int, int]  # `random.randint(a, b)` in `_forward_inference`
    num_clips: int  # the script's --num_clip: at most this many clips (the speech decides)


def reference_fast_settings(pipeline: Any) -> ReferenceFastSettings:
    """`ReferenceFastSettings` of the checkout; `pipeline` is a `reference_pipeline`."""
    arguments = reference_run_arguments()
    generate = liveavatar_module("models.wan.causal_s2v_pipeline").WanS2V.generate
    schedulers = literal_call_arguments(generate, "FlowMatchEulerDiscreteScheduler")
    if arguments["sample_solver"] != "euler" or len(schedulers) != 1:
        raise RuntimeError("the harness expects Live Avatar's single-GPU run to sample with one Euler scheduler")
    forward = liveavatar_module("models.wan.causal_model_s2v").CausalWanModel_S2V._forward_inference
    (rope_range,) = [args for args, _ in literal_call_arguments(forward, "randint")]
    args_config = liveavatar_module("utils.args_config")
    training = args_config.parse_args_for_training_config(str(liveavatar_root() / arguments["training_config"]))
    width, height = (int(side) for side in str(arguments["size"]).split("*"))
    return ReferenceFastSettings(
        fps=pipeline.fps,
        latent_frames_per_block=pipeline.num_frames_per_block,
        clip_frames=int(arguments["infer_frames"]),
        motion_frames=pipeline.motion_frames,
        audio_window=pipeline.audio_sample_m,
        speech_feature_rate=pipeline.audio_encoder.video_rate,
        sampling_steps=int(arguments["sample_steps"]),
        solver=arguments["sample_solver"],
        guide_scale=float(arguments["sample_guide_scale"]),
        shift=float(schedulers[0][1]["shift"]),
        num_train_timesteps=pipeline.num_train_timesteps,
        max_area=width * height,
        lora_rank=int(training["lora_rank"]),
        lora_alpha=float(training["lora_alpha"]),
        ref_rope_offsets=tuple(rope_range),
        num_clips=int(arguments["num_clip"]),
    )


def write_reference_wav2vec2(checkpoint_dir: Path, hidden_size: int) -> Path:
    """The tiny wav2vec2 where the reference's pipeline looks for it (the config's `wav2vec`
    folder in the checkpoint folder), with the 25 hidden states its audio encoder mixes, its
    processor and tokenizer. Returns the folder."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from tests.wan_tiny_models import write_tiny_wav2vec2

    folder = write_tiny_wav2vec2(Path(checkpoint_dir) / reference_s2v_config().wav2vec, hidden_size=hidden_size)
    config = Wav2Vec2Config.from_pretrained(folder)
    config.num_hidden_layers = NUM_WAV2VEC_LAYERS - 1  # + the embeddings' output
    torch.manual_seed(3)
    Wav2Vec2ForCTC(config).eval().save_pretrained(folder)
    return folder


def reference_pipeline(
    model: torch.nn.Module,
    *,
    text_encoder: Any,
    vae: Any,
    checkpoint_dir: str | os.PathLike,
    audio_encoder: Any = None,
) -> Any:
    """Live Avatar's `WanS2V`, made by its own `__init__` from the s2v-14B config and the switches
    the single-GPU script gives it, with the tiny models in the checkpoint's place, on CPU in
    float32.

    Its T5, VAE and transformer are the caller's (`model`: a `reference_causal_model`; the
    adapters as `reference_generate` describes them); its speech encoder is the reference's own
    `AudioEncoder` on the wav2vec2 folder in `checkpoint_dir` (`write_reference_wav2vec2`), or
    `audio_encoder` when given. Left out of the config: its bfloat16 `param_dtype` (float32 here)
    and the script's `--convert_model_dtype`, and the CUDA device (the CPU).
    """
    module = liveavatar_module("models.wan.causal_s2v_pipeline")
    arguments = reference_run_arguments()
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(module, "T5EncoderModel", lambda **kwargs: text_encoder)
        patch.setattr(module, "Wan2_1_VAE", lambda **kwargs: vae)
        patch.setattr(module, "CausalWanModel_S2V", types.SimpleNamespace(from_pretrained=lambda *a, **k: model))
        if audio_encoder is not None:
            patch.setattr(module, "AudioEncoder", lambda **kwargs: audio_encoder)
        stack.enter_context(_cuda_is_cpu(torch.Tensor))
        stack.enter_context(_cuda_is_cpu(torch.nn.Module))
        pipeline = module.WanS2V(
            config=reference_s2v_config(),
            checkpoint_dir=str(checkpoint_dir),
            device_id=0,
            rank=0,
            t5_cpu=bool(arguments["t5_cpu"]),
            convert_model_dtype=False,
            single_gpu=True,  # the script's, and what it sets for one process
            offload_kv_cache=bool(arguments["offload_kv_cache"]),
        )
    pipeline.device = torch.device("cpu")
    pipeline.param_dtype = torch.float32
    return pipeline


def reference_block_speech(pipeline: Any, audio_path: str, clip_frames: int) -> list[torch.Tensor]:
    """The speech features `WanS2V.generate` hands its transformer, block by block over every clip
    the speech gets: `encode_audio` (wav2vec2, resampling, `get_audio_embed_bucket_fps` at the
    pipeline's fps and audio window), cut per clip and per block as `generate` cuts them. Each
    [1, layers, hidden, 4 * frames per block]."""
    audio_emb, num_clips = pipeline.encode_audio(audio_path, infer_frames=clip_frames)
    frames_per_block = pipeline.num_frames_per_block * 4  # generate's `left_idx`/`right_idx`
    lat_motion_frames = (pipeline.motion_frames + 3) // 4
    blocks_per_clip = latent_frames_per_clip(clip_frames, (pipeline.motion_frames, lat_motion_frames))
    blocks_per_clip //= pipeline.num_frames_per_block
    blocks = []
    for clip in range(num_clips):
        clip_audio = audio_emb[..., clip * clip_frames : (clip + 1) * clip_frames]
        for block in range(blocks_per_clip):
            blocks.append(clip_audio[..., block * frames_per_block : (block + 1) * frames_per_block])
    return blocks


# --- the pipeline's generate -----------------------------------------------------------------


def reference_generate(
    pipeline: Any,
    *,
    ref_image_path: str | os.PathLike,
    audio_path: str,
    prompt: str,
    size: tuple[int, int],
    seed: int = 0,
    infer_frames: int | None = None,
    sampling_steps: int | None = None,
) -> torch.Tensor:
    """Run `WanS2V.generate` (Live Avatar's single-GPU streaming pipeline) on CPU in float32.

    `pipeline` is a `reference_pipeline`. The call is the single-GPU script's: its clip length,
    steps, solver, guidance and clip count (`reference_run_arguments`; `infer_frames` and
    `sampling_steps` override the first two for smaller runs), deferred decoding, no pose video.
    While it runs, CUDA devices it names are the CPU, its 40-head x 128 cache allocations take
    the model's heads and head size, and `dist.get_rank()` is 0. The adapters it calls as it
    calls the official objects:
    - text_encoder(prompts: list[str], device) -> [Tensor [L, text_dim]]; `.model` (an nn.Module);
    - vae: `.encode(video [1, 3, T, H, W]) -> [latents [C, 1 + (T - 1) // 4, H/8, W/8]]`
      (normalised, as Wan2_1_VAE), `.decode(latents [1, C, T', h, w]) -> [video [3, T, H, W]]`,
      `.model` (nn.Module), `.dtype`, `.device`;
    - a replaced audio_encoder: `.extract_audio_feat(path, return_all_layers=True) -> z` and
      `.get_audio_embed_bucket_fps(z, fps=, batch_frames=, m=) -> (features [T, 25, audio_dim],
      number of clips the audio covers)`; `.model` (nn.Module).
    ref_image_path: an RGB image of exactly `size` (H, W) (the resize/crop are not reproduced).
    Wrap the call in `fixed_ref_rope_offsets` to make it deterministic.
    Returns the video [3, frames, H, W] as `generate` does.
    """
    arguments = reference_run_arguments()
    pipeline_module = liveavatar_module("models.wan.causal_s2v_pipeline")
    pipeline.get_gen_size = lambda *args, **kwargs: tuple(size)
    height, width = size
    model = pipeline.noise_model
    heads, head_dim = model.num_heads, model.dim // model.num_heads
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(pipeline_module, "dist", types.SimpleNamespace(get_rank=lambda: 0))
        patch.setattr(pipeline_module, "tqdm", lambda iterable, *args, **kwargs: iterable)
        patch.setattr(torch.cuda, "empty_cache", lambda: None)
        patch.setattr(torch.cuda, "synchronize", lambda *args: None)
        stack.enter_context(_cuda_is_cpu(torch.Tensor))
        stack.enter_context(_cuda_is_cpu(torch.nn.Module))
        stack.enter_context(_tiny_pipeline_factories(pipeline_module.__dict__, heads, head_dim))
        stack.enter_context(_sink_noise_width(model))
        video, _ = pipeline.generate(
            input_prompt=prompt,
            ref_image_path=str(ref_image_path),
            audio_path=audio_path,
            num_repeat=int(arguments["num_clip"]),
            pose_video=arguments["pose_video"],
            max_area=height * width,
            infer_frames=infer_frames or int(arguments["infer_frames"]),
            sample_solver=arguments["sample_solver"],
            sampling_steps=sampling_steps or int(arguments["sample_steps"]),
            guide_scale=float(arguments["sample_guide_scale"]),
            seed=seed,
            offload_model=False,  # moves models between devices only: all are on the CPU here
            init_first_frame=bool(arguments["start_from_ref"]),
            drop_motion_noisy=bool(arguments["drop_motion_noisy"]),
            enable_online_decode=bool(arguments["enable_online_decode"]),
        )
    return video


@contextlib.contextmanager
def _tiny_pipeline_factories(pipeline_globals: dict, heads: int, head_dim: int) -> Iterator[None]:
    """torch.zeros/torch.tensor called by the pipeline file: CUDA devices are the CPU, and the
    14B's hard-coded cache layout [..., 40, 128] becomes [..., heads, head_dim]."""
    originals = {"zeros": torch.zeros, "tensor": torch.tensor}

    def adapt(name):
        original = originals[name]

        def factory(*args, **kwargs):
            if _caller_globals() is pipeline_globals:
                if _names_cuda(kwargs.get("device")):
                    kwargs["device"] = "cpu"
                if name == "zeros" and args and isinstance(args[0], list) and args[0][-2:] == [40, 128]:
                    args = ([*args[0][:-2], heads, head_dim], *args[1:])
            return original(*args, **kwargs)

        return factory

    for name in originals:
        setattr(torch, name, adapt(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


def latent_frames_per_clip(infer_frames: int, motion_frames: Sequence[int] = MOTION_FRAMES) -> int:
    """The pipeline's `lat_target_frames`: (infer_frames + 3 + motion_frames[0]) // 4 - lat motion frames."""
    return (infer_frames + 3 + motion_frames[0]) // 4 - (motion_frames[0] + 3) // 4


__all__ = [
    "FRAMES_PER_BLOCK",
    "MOTION_FRAMES",
    "NUM_WAV2VEC_LAYERS",
    "REFERENCE_ENV",
    "REF_ROPE_OFFSET_RANGE",
    "RefRopeOffsets",
    "ReferenceFastSettings",
    "cond_cache_tokens",
    "fixed_ref_rope_offsets",
    "latent_frames_per_clip",
    "literal_call_arguments",
    "liveavatar_module",
    "liveavatar_root",
    "new_reference_caches",
    "reference_block",
    "reference_block_speech",
    "reference_causal_model",
    "reference_clip",
    "reference_config",
    "reference_fast_settings",
    "reference_generate",
    "reference_pipeline",
    "reference_prefill",
    "reference_run_arguments",
    "reference_s2v_config",
    "reference_scheduler",
    "requires_liveavatar",
    "sharpen_attention",
    "write_reference_wav2vec2",
]
