"""Speed and memory of Wan2.2-S2V-14B on this GPU, per memory mode, generation mode and resolution.

The models have the real 14B architecture with random weights (speed does not depend on the
values): the transformer, umt5-xxl, wav2vec2-large and the Wan2.1 VAE, placed exactly as the
worker places them for each memory mode (model/wan_common/placement.py), with a random rank-128 LoRA
in the published layout attached as the worker attaches Live Avatar's, and driven through the
worker's own generation loops (model/wan_s2v/pipeline.py, fast_pipeline.py).

    python scripts/benchmark_gpu.py                       # every memory mode, quality and fast
    python scripts/benchmark_gpu.py --modes fp8 --generations fast --json out.json

quality (40 steps with guidance, 480p and 720p): one clip with a few steps; printed are seconds
per denoising step (both guidance passes, batched), VAE seconds per clip, GPU seconds per second
of video at 40 steps (extrapolated), peak GPU memory, and model FLOP utilisation against the
GPU's dense bf16 peak.
fast (Live Avatar, 4 steps, 704x384): a whole job of four clips, timed as it runs; printed are
the portrait's encoding, seconds from the start of generation to the first decoded block, GPU
seconds per second of video over the third clip (steady state: its steps, its decodes behind the
history, its frames encoded as history), where the attention rings lived, and peak GPU memory.
Where the worker kept all four rings on the GPU, the job runs again with one streamed from host
memory (a layer at a time, beside the compute): the difference is what the copies cost where
they do not hide behind the compute.

Every run is split by where its GPU time goes: transformer passes (with the copies of streamed
rings, which run inside them) and VAE encodes and decodes, each timed between
torch.cuda.synchronize() calls by wrappers this script installs for the run (SplitTimer); the
worker's code is not changed, only serialised a little while it is timed. Each
run is repeated per attention kernel (WAN_ATTENTION_BACKEND's choices that this GPU can run, see
--attention) and, with --compile, with the transformer's blocks compiled (WAN_COMPILE).

On a bare GPU machine with no network, one command (scripts/benchmark_gpu.sh) installs the extra
packages from local wheels (requirements-benchmark.txt) and runs this with the repository root on
the import path; `python scripts/benchmark_gpu.py` from any folder and
`python -m scripts.benchmark_gpu` work alike. No weights are needed: the models are random.

Prompt embeddings are cached at worker start, so they are encoded before timing (in the offload
mode on the GPU, before the text encoder moves to the CPU); the timings are the per-clip work.
"""

# ruff: noqa: E402 - the repository root goes on the import path before the project's imports

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python scripts/benchmark_gpu.py` from any folder
    sys.path.insert(0, str(ROOT))

import argparse
import contextlib
import dataclasses
import functools
import gc
import itertools
import json
import statistics
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from model.wan_common.config import TEXT_LEN, UMT5_XXL_ENCODER_CONFIG
from model.wan_common.lora import LoraAdapter
from model.wan_common.memory import GIB, MemoryMode
from model.wan_common.placement import place_transformer, text_encoder_compute_device, text_encoder_home
from model.wan_common.vae import StreamingDecoder, StreamingEncoder, WanVideoVAE
from model.wan_s2v import fast_pipeline
from model.wan_s2v._transformer_block import ATTENTION_KERNELS, attention_kernel
from model.wan_s2v.config import (
    FAST_FPS,
    FAST_FRAMES_PER_CLIP,
    FAST_MAX_AREA,
    FAST_SAMPLE_STEPS,
    FPS,
    FRAMES_PER_CLIP,
    LORA_ALPHA,
    MOTION_FRAMES,
    NEGATIVE_PROMPT,
    SAMPLE_STEPS,
)
from model.wan_s2v.fast_pipeline import BLOCKS_PER_CLIP, FastSampler
from model.wan_s2v.lora import LIVE_AVATAR_LORA
from model.wan_s2v.memory import FP8_BLOCK_LAYERS, RingPlan
from model.wan_s2v.pipeline import FIRST_CLIP_DROPPED_FRAMES, SamplingSettings, WanS2VPipeline
from model.wan_s2v.sizing import output_size
from model.wan_s2v.speech import SpeechEncoder
from model.wan_s2v.transformer import WanS2VTransformer3DModel

# (portrait height, width, pixel-area budget) of the contract's resolutions
RESOLUTIONS = {"480p": (480, 832, 832 * 480), "720p": (720, 1280, 1280 * 720)}
# Dense bf16 tensor-core peaks from the datasheets (SXM parts).
DATASHEET_BF16_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362.05e12, "A6000": 154.8e12}
PROMPT = "A person speaking"
# A clip's worth of speech: 77 frames, exactly the first clip.
SPEECH_SECONDS = (FRAMES_PER_CLIP - FIRST_CLIP_DROPPED_FRAMES) / FPS
# The fast mode's portrait (the reference's 704*384 budget) and four whole clips of speech: the
# third is the steady state (the second decodes a longer history once; the last encodes nothing).
FAST_PORTRAIT = (384, 704)
FAST_CLIPS = 4
FAST_SPEECH_SECONDS = (FAST_CLIPS * FAST_FRAMES_PER_CLIP - FIRST_CLIP_DROPPED_FRAMES) / FAST_FPS
LORA_RANK = 128
# Live Avatar's peft targets, by official name
LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


class SplitTimer:
    """Seconds spent in transformer passes and VAE work, each call timed between synchronisations,
    while `installed()` wraps the worker's methods."""

    PARTS = ("transformer", "vae")

    def __init__(self, parts: Sequence[str] = PARTS) -> None:
        self.parts = tuple(parts)
        self.seconds = dict.fromkeys(self.parts, 0.0)
        self.durations: dict[str, list[float]] = {part: [] for part in self.parts}
        self._depth = 0  # only the outermost timed call counts (a VAE call inside another, say)

    def timed(self, part: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if self._depth:
                return function(*args, **kwargs)
            torch.cuda.synchronize()
            started = time.perf_counter()
            self._depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                self._depth -= 1
                torch.cuda.synchronize()
                elapsed = time.perf_counter() - started
                self.seconds[part] += elapsed
                self.durations[part].append(elapsed)

        return wrapper

    @contextlib.contextmanager
    def installed(self, transformer: torch.nn.Module) -> Iterator[SplitTimer]:
        passes = ("forward", "prefill_condition", "forward_block")
        patches: list[tuple[Any, str, str]] = [(transformer, name, "transformer") for name in passes]
        patches += [(WanVideoVAE, "encode", "vae"), (WanVideoVAE, "decode", "vae"), (StreamingDecoder, "decode", "vae")]
        patches += [(StreamingEncoder, "encode", "vae"), (StreamingEncoder, "last_latents", "vae")]
        with self.patched(patches):
            yield self

    @contextlib.contextmanager
    def patched(self, patches: Sequence[tuple[Any, str, str]]) -> Iterator[SplitTimer]:
        """Each (owner, method name, part) timed as that part while it lasts."""
        saved = []
        for owner, name, part in patches:
            saved.append((owner, name, owner.__dict__.get(name)))
            setattr(owner, name, self.timed(part, getattr(owner, name)))
        try:
            yield self
        finally:
            for owner, name, original in reversed(saved):
                if original is None:
                    delattr(owner, name)  # an instance's wrapper over its class's method
                else:
                    setattr(owner, name, original)

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)


def available_attention_kernels(device: torch.device, heads: int, head_dim: int) -> dict[str, str]:
    """For each WAN_ATTENTION_BACKEND choice, "" where SDPA runs that kernel on this GPU for the
    transformer's head shape in bf16 without falling back, else why not."""
    query = torch.randn(1, heads, 256, head_dim, device=device, dtype=torch.bfloat16)
    found = {}
    for name in ATTENTION_KERNELS:
        try:
            with attention_kernel(name, fallback=False):
                torch.nn.functional.scaled_dot_product_attention(query, query, query)
            found[name] = ""
        except Exception as error:  # noqa: BLE001 - the kernel cannot run here: say why and skip it
            found[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:100] if str(error) else ''}"
    return found


class TokenIdTextEncoder:
    """umt5-xxl run on fixed token ids: the tokenizer files are not here, and cost nothing anyway."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = torch.randint(1, 1000, (len(prompts), TEXT_LEN), device=device)
        mask = torch.ones_like(ids)
        mask[:, 24:] = 0
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)


def build_on_gpu(factory, dtype: torch.dtype, device: torch.device):
    """Construct a module directly on the GPU in `dtype` (default initialisation is random enough)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device, torch.no_grad():
            # .to(): a few constructors (wav2vec2's masked_spec_embed) ignore the device context
            return factory().to(device).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(previous)


def write_random_lora(folder: Path, config) -> Path:
    """A rank-128 LoRA for every layer Live Avatar's peft config targets, in the published
    spelling, with random values (its cost does not depend on them)."""
    from safetensors.torch import save_file

    dim, ffn = config.num_attention_heads * config.attention_head_dim, config.ffn_dim
    shapes = {"ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}
    tensors = {}
    modules = [f"blocks.{block}.{target}" for block in range(config.num_layers) for target in LORA_TARGETS]
    modules += [
        f"audio_injector.injector.{index}.{part}" for index in range(len(config.audio_inject_layers)) for part in "qkvo"
    ]
    for module in modules:
        out_features, in_features = shapes.get(module.split(".", 2)[-1], (dim, dim))
        tensors[f"{module}.lora_A.default.weight"] = torch.randn(LORA_RANK, in_features, dtype=torch.bfloat16) * 0.01
        tensors[f"{module}.lora_B.default.weight"] = torch.randn(out_features, LORA_RANK, dtype=torch.bfloat16) * 0.01
    path = folder / "liveavatar.safetensors"
    save_file(tensors, str(path))
    return path


def build_pipeline(mode: MemoryMode, device: torch.device, lora_folder: Path) -> tuple[WanS2VPipeline, LoraAdapter]:
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    transformer = build_on_gpu(WanS2VTransformer3DModel, torch.bfloat16, device)
    if mode is not MemoryMode.FULL:
        transformer.to("cpu")  # where the worker's loader leaves it for these modes
        torch.cuda.empty_cache()
    lora_file = lora_folder / "liveavatar.safetensors"
    if not lora_file.is_file():
        write_random_lora(lora_folder, transformer.config)
    # before placing, as the worker does
    lora = LoraAdapter.attach(transformer, lora_file, LORA_ALPHA, LIVE_AVATAR_LORA)
    place_transformer(transformer, mode, device, FP8_BLOCK_LAYERS)

    t5 = build_on_gpu(lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL_ENCODER_CONFIG, is_encoder_decoder=False)),
                      torch.bfloat16, device)
    wav2vec = build_on_gpu(
        lambda: Wav2Vec2Model(Wav2Vec2Config(
            hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
            feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        )),
        torch.float32, device,
    )
    vae = build_on_gpu(AutoencoderKLWan, torch.float32, device)
    components = types.SimpleNamespace(
        transformer=transformer,
        vae=WanVideoVAE(vae),
        text_encoder=TokenIdTextEncoder(t5),
        speech_encoder=SpeechEncoder(wav2vec, Wav2Vec2FeatureExtractor(do_normalize=True)),
    )
    pipeline = WanS2VPipeline(components, device, torch.bfloat16)
    for prompt in (PROMPT, NEGATIVE_PROMPT):  # cached at worker start
        pipeline.encode_prompt(prompt)
    t5.to(text_encoder_home(mode, device))
    pipeline.text_device = text_encoder_compute_device(mode, device)
    torch.cuda.empty_cache()
    return pipeline, lora


def count_step_flops(pipeline: WanS2VPipeline, run_one_clip) -> float:
    """FLOPs of one denoising step (one batched transformer call), counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    captured: dict = {}
    original = pipeline.transformer.forward

    def capture(hidden_states, **kwargs):
        captured.setdefault("call", (hidden_states, kwargs))
        return original(hidden_states, **kwargs)

    pipeline.transformer.forward = capture
    try:
        run_one_clip(SamplingSettings(num_steps=1))
    finally:
        pipeline.transformer.forward = original
    hidden_states, kwargs = captured["call"]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        original(hidden_states, **kwargs)
    return float(counter.get_total_flops())


def measure_matmul_peak(device: torch.device) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 20 / (time.perf_counter() - start)


def benchmark(pipeline: WanS2VPipeline, resolution: str, steps: int, flops_cache: dict[str, float]) -> dict:
    portrait_h, portrait_w, area = RESOLUTIONS[resolution]
    height, width = output_size(portrait_h, portrait_w, area)
    image = np.random.default_rng(0).integers(0, 256, (portrait_h, portrait_w, 3), dtype=np.uint8)
    portrait = pipeline.encode_portrait(image, height, width)
    speech = (0.1 * np.random.default_rng(1).standard_normal(int(SPEECH_SECONDS * 16000))).astype(np.float32)

    def run_one_clip(settings: SamplingSettings, on_progress=lambda fraction, detail: None) -> None:
        for _ in pipeline.generate(portrait, speech, 42, PROMPT, settings, on_progress):
            pass

    if resolution not in flops_cache:
        flops_cache[resolution] = count_step_flops(pipeline, run_one_clip)

    ticks: list[tuple[float, str]] = []

    def on_progress(fraction: float, detail: str) -> None:
        torch.cuda.synchronize()
        ticks.append((time.perf_counter(), detail))

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with SplitTimer().installed(pipeline.transformer) as timer:
        run_one_clip(SamplingSettings(num_steps=steps), on_progress)
    peak = torch.cuda.max_memory_allocated()
    # The first step also carries the speech encoding and the start of the clip: skip it.
    step_seconds = statistics.median(later - earlier for (earlier, _), (later, _) in itertools.pairwise(ticks[:steps]))
    decode_seconds = ticks[steps][0] - ticks[steps - 1][0]

    black = torch.zeros(1, 3, MOTION_FRAMES, height, width, device=pipeline.vae.device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    pipeline.vae.encode(black)
    torch.cuda.synchronize()
    motion_encode_seconds = time.perf_counter() - start

    clip_seconds = SAMPLE_STEPS * step_seconds + decode_seconds + motion_encode_seconds
    video_seconds = FRAMES_PER_CLIP / FPS
    # one batched transformer call per step; the median leaves the first (warm-up) out
    transformer_step = statistics.median(timer.durations["transformer"])
    vae_clip = timer.seconds["vae"] + motion_encode_seconds  # the clip's decode, the next one's history encode
    return {
        "resolution": resolution,
        "height": height,
        "width": width,
        "seconds_per_step": step_seconds,
        "decode_seconds_per_clip": decode_seconds,
        "motion_encode_seconds_per_clip": motion_encode_seconds,
        "gpu_seconds_per_video_second": clip_seconds / video_seconds,
        "transformer_seconds_per_video_second": SAMPLE_STEPS * transformer_step / video_seconds,
        "vae_seconds_per_video_second": vae_clip / video_seconds,
        # the first clip at SAMPLE_STEPS steps: its first step as timed (with the speech encoding),
        # the others at the median, then its decode
        "first_block_seconds": ticks[0][0] - started + (SAMPLE_STEPS - 1) * step_seconds + decode_seconds,
        "peak_gpu_gib": peak / GIB,
        "step_tflop": flops_cache[resolution] / 1e12,
    }


def benchmark_fast(pipeline: WanS2VPipeline, lora: LoraAdapter, streamed_rings: int = 0) -> dict:
    """A whole fast job of four clips at the reference's size, timed block by block; with
    `streamed_rings`, at least that many of its rings streamed from host memory."""
    portrait_h, portrait_w = FAST_PORTRAIT
    height, width = output_size(portrait_h, portrait_w, FAST_MAX_AREA)
    image = np.random.default_rng(0).integers(0, 256, (portrait_h, portrait_w, 3), dtype=np.uint8)
    speech = (0.1 * np.random.default_rng(1).standard_normal(int(FAST_SPEECH_SECONDS * 16000))).astype(np.float32)
    sampler = FastSampler(pipeline)
    device = pipeline.device

    torch.cuda.synchronize()
    started = time.perf_counter()
    portrait = sampler.encode_portrait(image, height, width)
    torch.cuda.synchronize()
    portrait_seconds = time.perf_counter() - started

    torch.cuda.reset_peak_memory_stats()
    frames_at: list[tuple[float, int]] = []
    started = time.perf_counter()
    blocks_per_clip = BLOCKS_PER_CLIP
    splits: list[dict[str, float]] = []  # at the end of each clip
    with lora.active(), SplitTimer().installed(pipeline.transformer) as timer, rings_streamed(streamed_rings):
        for frames in sampler.generate(portrait, speech, 42, PROMPT, FAST_SAMPLE_STEPS, lambda *_: None):
            torch.cuda.synchronize()  # frames are on the host already; this only makes the clock honest
            frames_at.append((time.perf_counter() - started, len(frames)))
            if len(frames_at) % blocks_per_clip == 0:
                splits.append(timer.snapshot())
    steady = 2  # the third clip
    clip_end = [frames_at[(clip + 1) * blocks_per_clip - 1][0] for clip in range(FAST_CLIPS)]
    clip_video_seconds = FAST_FRAMES_PER_CLIP / FAST_FPS
    split = {f"{part}_seconds_per_video_second": (splits[steady][part] - splits[steady - 1][part]) / clip_video_seconds
             for part in SplitTimer.PARTS}
    return {
        "resolution": "fast",
        "height": height,
        "width": width,
        "portrait_seconds": portrait_seconds,
        "first_block_seconds": frames_at[0][0],
        "total_seconds": frames_at[-1][0],
        "video_seconds": sum(count for _, count in frames_at) / FAST_FPS,
        "gpu_seconds_per_video_second": (clip_end[steady] - clip_end[steady - 1]) / clip_video_seconds,
        **split,
        "attention_rings": str(sampler.ring_plan),
        "streamed_rings_forced": streamed_rings,
        "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / GIB,
    }


@contextlib.contextmanager
def rings_streamed(count: int) -> Iterator[None]:
    """At least `count` of a fast job's rings streamed from host memory, whatever would fit."""
    if not count:
        yield
        return
    place = fast_pipeline.place_rings

    def fewer_resident(*args, **kwargs) -> RingPlan:
        plan = place(*args, **kwargs)
        return dataclasses.replace(plan, resident=max(0, min(plan.resident, plan.total - count)))

    fast_pipeline.place_rings = fewer_resident
    try:
        yield
    finally:
        fast_pipeline.place_rings = place


GOALS = "goals: fast <= 2.5 GPU s per video s at 25 fps and first block <= 3 s on an H100/H200; quality no slower"


def print_tables(results: list[dict], gpu_name: str, peak_for_mfu: float) -> None:
    """One table per memory mode and generation mode, a row per attention kernel (and compilation)."""
    print(f"\n{gpu_name}; MFU against {peak_for_mfu / 1e12:.0f} TFLOP/s bf16; quality: {SAMPLE_STEPS} steps per "
          f"5 s clip at {FPS} fps; fast: {FAST_SAMPLE_STEPS} steps, {FAST_FPS} fps, the second clip (steady state)")
    print(GOALS)
    header = (f"{'attention':14} {'size':>9} {'GPU s/video s':>13} {'transformer':>11} {'VAE':>6} "
              f"{'first block s':>13} {'peak GiB':>8}")
    for mode in dict.fromkeys(row["mode"] for row in results):
        for generation in ("quality", "fast"):
            rows = [row for row in results if row["mode"] == mode
                    and (row.get("resolution") == "fast") == (generation == "fast") and "resolution" in row]
            if not rows:
                continue
            print(f"\n{mode} / {generation}")
            print(header + ("  rings" if generation == "fast" else f" {'s/step':>6} {'MFU':>5}"))
            for row in rows:
                kernel = row["attention"] + (" compiled" if row["compiled"] else "")
                if "error" in row:
                    print(f"{kernel:14} {row['resolution']:>9} failed: {row['error'][:80]}")
                    continue
                per_video_second = [row[f"{part}_seconds_per_video_second"] for part in ("gpu", *SplitTimer.PARTS)]
                line = (f"{kernel:14} {row['width']:>4}x{row['height']:<4} {per_video_second[0]:13.2f} "
                        f"{per_video_second[1]:11.2f} {per_video_second[2]:6.2f} "
                        f"{row['first_block_seconds']:13.2f} {row['peak_gpu_gib']:8.1f}")
                if generation == "fast":
                    line += f"  {row['attention_rings']}"
                else:
                    line += f" {row['seconds_per_step']:6.2f} {row['mfu']:5.1%}"
                print(line)
    failed = [row for row in results if "resolution" not in row]
    for row in failed:
        print(f"{row['mode']}: failed: {row['error'][:100]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = [mode.value for mode in MemoryMode]
    parser.add_argument("--modes", nargs="+", default=modes, choices=modes)
    parser.add_argument("--generations", nargs="+", default=["quality", "fast"], choices=["quality", "fast"])
    parser.add_argument("--resolutions", nargs="+", default=list(RESOLUTIONS), choices=list(RESOLUTIONS),
                        help="of the quality mode (the fast mode runs at its reference size)")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps timed per run (the first is not counted)")
    parser.add_argument("--attention", nargs="+", default=list(ATTENTION_KERNELS), choices=list(ATTENTION_KERNELS),
                        help="the attention kernels (WAN_ATTENTION_BACKEND) to run each benchmark with; those this "
                             "GPU cannot run are skipped")
    parser.add_argument("--compile", action="store_true",
                        help="also run each kernel with the transformer's blocks compiled (WAN_COMPILE)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: this benchmark needs one", file=sys.stderr)
        return 1
    if args.steps < 3:
        parser.error("--steps must be at least 3 (the first step is a warm-up)")

    device = torch.device("cuda")
    gpu_name = torch.cuda.get_device_name(device)
    datasheet_peak = next((peak for key, peak in DATASHEET_BF16_PEAK.items() if key in gpu_name), None)
    matmul_peak = measure_matmul_peak(device)
    print(f"{gpu_name}, torch {torch.__version__}: bf16 matmul 8192^3 runs at {matmul_peak / 1e12:.0f} TFLOP/s"
          + (f" (datasheet dense peak {datasheet_peak / 1e12:.0f})" if datasheet_peak else ""), flush=True)
    peak_for_mfu = datasheet_peak or matmul_peak

    results: list[dict] = []
    flops_cache: dict[str, float] = {}
    lora_folder = Path(tempfile.mkdtemp(prefix="benchmark-lora-"))
    for mode_name in args.modes:
        mode = MemoryMode(mode_name)
        started = time.perf_counter()
        try:
            pipeline, lora = build_pipeline(mode, device, lora_folder)
        except Exception as error:  # noqa: BLE001 - report and go on with the other modes
            traceback.print_exc()
            print(f"{mode.value}: could not place the models: {type(error).__name__}: {error}", flush=True)
            results.append({"mode": mode.value, "error": f"{type(error).__name__}: {error}"})
            gc.collect()
            torch.cuda.empty_cache()
            continue
        resident = torch.cuda.memory_allocated() / GIB
        print(f"{mode.value}: models placed in {time.perf_counter() - started:.0f} s, {resident:.1f} GiB resident",
              flush=True)
        transformer = pipeline.transformer
        kernels = available_attention_kernels(device, transformer.config.num_attention_heads,
                                              transformer.config.attention_head_dim)
        for name, why in kernels.items():
            if why and name in args.attention:
                print(f"{mode.value}: attention kernel {name} cannot run here ({why}); skipped", flush=True)
        variants = [(name, False) for name in args.attention if not kernels[name]]
        variants += [(name, True) for name, _ in variants] if args.compile else []  # compiled last: it stays
        blocks_compiled = False
        for kernel, compiled in variants:
            transformer.configure_attention(kernel, compile_blocks=compiled and not blocks_compiled)
            blocks_compiled = blocks_compiled or compiled
            runs = [(resolution, functools.partial(benchmark, pipeline, resolution, args.steps, flops_cache))
                    for resolution in args.resolutions if "quality" in args.generations]
            if "fast" in args.generations:
                runs.append(("fast", functools.partial(benchmark_fast, pipeline, lora)))
            while runs:
                name, run = runs.pop(0)
                label = {"mode": mode.value, "resolution": name, "attention": kernel, "compiled": compiled}
                try:
                    row = run()
                except Exception as error:  # noqa: BLE001
                    traceback.print_exc()
                    print(f"{mode.value} {name} {kernel}: failed: {type(error).__name__}: {error}", flush=True)
                    results.append({**label, "error": f"{type(error).__name__}: {error}"})
                    torch.cuda.empty_cache()
                    continue
                row.update(label, resident_gib=resident)
                if "step_tflop" in row:
                    row["mfu"] = row["step_tflop"] * 1e12 / row["seconds_per_step"] / peak_for_mfu
                results.append(row)
                print(json.dumps(row), flush=True)
                if name == "fast" and row["attention_rings"] == str(RingPlan(FAST_SAMPLE_STEPS, FAST_SAMPLE_STEPS)):
                    # what streaming costs where it must: the same job with one ring in host memory
                    runs.append(("fast", functools.partial(benchmark_fast, pipeline, lora, streamed_rings=1)))
        del pipeline, lora, transformer
        gc.collect()
        torch.cuda.empty_cache()

    print_tables(results, gpu_name, peak_for_mfu)
    if args.json:
        # "results" holds what the worker runs by default (scripts/cost.py prices those), "variants" the others
        default = [row for row in results if row.get("attention", "auto") == "auto" and not row.get("compiled")
                   and not row.get("streamed_rings_forced")]
        others = [row for row in results if row not in default]
        args.json.write_text(json.dumps({"gpu": gpu_name, "torch": torch.__version__, "results": default,
                                         "variants": others}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
