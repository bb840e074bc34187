"""Speed and memory of OmniAvatar (Wan2.1-T2V 14B and 1.3B + its audio modules) on this GPU, per
model size and memory mode.

The transformers have the real architectures (model/omniavatar/config.py TRANSFORMERS; the audio
modules' 10752-wide speech rows and 32-wide hidden layer) with random bf16 weights (speed does not
depend on the values), placed as the worker places them for each memory mode
(model/omniavatar/memory.py, wan_common/placement.py); the VAE is the real Wan2.1 one, random.
The published LoRA is merged into the weights at load (model/omniavatar/lora.py): no LoRA runs.
One chunk at 720x720 with max_tokens 30000 (57 frames, 44 new per later chunk) runs through the
worker's own `OmniAvatarPipeline.generate_pixels` with --steps steps.

Not loaded: umT5-xxl and wav2vec2, which run once per job (the prompt's states are cached): the
prompts are random umT5-shaped states [1, 512, 4096] and the speech rows random [frames, 10752].
Their weights are not in the peak memory printed.

    python scripts/benchmark_omniavatar.py                    # both sizes, every memory mode
    python scripts/benchmark_omniavatar.py --sizes 14B --modes fp8 --json out.json

Printed per run: seconds per sampling step (both guidance passes; the median, the first step not
counted), VAE seconds per chunk (its decode and the next chunk's overlap encode), GPU seconds per
second of video extrapolated to 50 steps over a later chunk's 44 new frames (the output says so),
and the peak GPU memory. The goals checked: the 14B <= 8 s per step on an H100, the 1.3B >= 8x
faster than the 14B (per memory mode).
"""

# ruff: noqa: E402 - the repository root goes on the import path before the project's imports

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python scripts/benchmark_omniavatar.py` from any folder
    sys.path.insert(0, str(ROOT))

import argparse
import dataclasses
import gc
import json
import statistics
import time
import traceback
import types
from typing import Any

import numpy as np
import torch

from model.omniavatar.config import (
    AUDIO_FEATURE_DIM,
    AUDIO_HIDDEN_SIZE,
    FPS,
    IN_CHANNELS,
    MAX_TOKENS,
    OVERLAP_FRAMES,
    SAMPLE_RATE,
    SAMPLE_STEPS,
    TRANSFORMERS,
)
from model.omniavatar.layout import chunk_frames
from model.omniavatar.memory import FP8_BLOCK_LAYERS
from model.omniavatar.pipeline import ChunkSettings, OmniAvatarComponents, OmniAvatarPipeline
from model.omniavatar.transformer import OmniAvatarTransformer3DModel
from model.wan_common.config import TEXT_LEN
from model.wan_common.memory import MemoryMode
from model.wan_common.placement import place_transformer
from model.wan_common.vae import StreamingDecoder, WanVideoVAE
from scripts.benchmark_common import (
    cpu_stand_ins,
    device_name,
    peak_gib,
    refuse_without_cuda,
    write_json,
)
from scripts.benchmark_gpu import SplitTimer, build_on_gpu

GOAL_14B_SECONDS_PER_STEP = 8.0
GOAL_1_3B_SPEED_UP = 8.0
GOAL = (f"goals: 14B <= {GOAL_14B_SECONDS_PER_STEP:g} s per step at 720x720, {MAX_TOKENS} tokens on an H100 "
        f"(the reference: 16 s on an A800); 1.3B >= {GOAL_1_3B_SPEED_UP:g}x faster than the 14B")
NOTES = (
    "random weights of the real transformers and Wan2.1 VAE; umT5 and wav2vec2 not loaded (random prompt states "
    "and speech rows: they run once per job) and not in the peak memory",
    f"one chunk timed over a few steps; GPU s per video s extrapolated to {SAMPLE_STEPS} steps over a later "
    "chunk's new frames",
)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What the `--tiny` CPU path shrinks: the chunk's size and tokens, and the models' configs."""

    height: int
    width: int
    max_tokens: int
    overlap: int
    transformers: dict[str, dict[str, Any]]
    vae: dict[str, Any]
    dtype: torch.dtype


def published_arguments(size: str) -> dict[str, Any]:
    published = TRANSFORMERS[size]
    return {
        "patch_size": published.patch_size, "num_attention_heads": published.num_heads,
        "attention_head_dim": published.dim // published.num_heads, "in_channels": IN_CHANNELS,
        "out_channels": published.out_dim, "text_dim": published.text_dim, "freq_dim": published.freq_dim,
        "ffn_dim": published.ffn_dim, "num_layers": published.num_layers, "eps": published.eps,
        "audio_feature_dim": AUDIO_FEATURE_DIM, "audio_hidden_size": AUDIO_HIDDEN_SIZE,
    }


PUBLISHED = Geometry(720, 720, MAX_TOKENS, OVERLAP_FRAMES, {size: published_arguments(size) for size in TRANSFORMERS},
                     {}, torch.bfloat16)
_TINY_TRANSFORMER = {"num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 9, "out_channels": 4,
                     "text_dim": 16, "freq_dim": 16, "ffn_dim": 32, "num_layers": 4, "audio_feature_dim": 24,
                     "audio_hidden_size": 8}
TINY = Geometry(
    32, 32, 9, 5, {"14B": {**_TINY_TRANSFORMER, "num_layers": 6}, "1.3B": {**_TINY_TRANSFORMER, "num_layers": 4}},
    {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 0,
     "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4},
    torch.float32,
)


class RandomTextEncoder:
    """umT5-shaped prompt states at random (the prompts are encoded once per job, not timed)."""

    def __init__(self, width: int, device: torch.device, dtype: torch.dtype) -> None:
        self.model = types.SimpleNamespace(device=device)
        self.width, self.dtype = width, dtype

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.randn(len(prompts), TEXT_LEN, self.width, device=self.model.device, dtype=self.dtype)


class RandomSpeechEncoder:
    """wav2vec2-shaped speech rows at random (the speech is encoded once per job, not timed)."""

    def __init__(self, width: int) -> None:
        self.width = width

    def encode(self, samples_16k: np.ndarray, frames: int) -> torch.Tensor:
        return torch.randn(frames, self.width)


def build_pipeline(size: str, mode: MemoryMode, device: torch.device, geometry: Geometry) -> OmniAvatarPipeline:
    from diffusers import AutoencoderKLWan

    arguments = geometry.transformers[size]
    transformer = build_on_gpu(lambda: OmniAvatarTransformer3DModel(**arguments), geometry.dtype, device)
    if mode is not MemoryMode.FULL:
        transformer.to("cpu")  # where the worker's loader leaves it for these modes
        torch.cuda.empty_cache()
    place_transformer(transformer, mode, device, FP8_BLOCK_LAYERS)
    vae = WanVideoVAE(build_on_gpu(lambda: AutoencoderKLWan(**geometry.vae), torch.float32, device))
    components = OmniAvatarComponents(
        transformer=transformer, vae=vae,
        text_encoder=RandomTextEncoder(transformer.config.text_dim, device, geometry.dtype),  # type: ignore[arg-type]
        speech_encoder=RandomSpeechEncoder(transformer.config.audio_feature_dim),  # type: ignore[arg-type]
    )
    torch.cuda.empty_cache()
    return OmniAvatarPipeline(components, device, geometry.dtype)


def benchmark(pipeline: OmniAvatarPipeline, geometry: Geometry, steps: int) -> dict:
    """One chunk of `steps` steps; its figures (see the module's docstring)."""
    height, width = geometry.height, geometry.width
    settings = ChunkSettings(steps=steps, max_tokens=geometry.max_tokens, overlap=geometry.overlap)
    chunk = chunk_frames(height, width, settings.max_tokens)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    portrait = pipeline.encode_portrait(image)
    samples = np.zeros(int(chunk / FPS * SAMPLE_RATE), dtype=np.float32)
    timer = SplitTimer(("transformer", "vae"))
    patches = [(pipeline.transformer, "forward", "transformer"), (WanVideoVAE, "encode", "vae"),
               (WanVideoVAE, "decode", "vae"), (StreamingDecoder, "decode", "vae")]
    # a VAE round trip of a chunk first: its convolutions pick their kernels at this shape untimed
    StreamingDecoder(pipeline.vae).decode(pipeline.vae.encode(torch.zeros(1, 3, chunk, height, width)))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with timer.patched(patches):
        pixels = next(pipeline.generate_pixels(portrait, samples, 42, "A person speaking", settings,
                                               lambda fraction, detail: None))
        if pixels.shape[2] != chunk:
            raise RuntimeError(f"the chunk has {pixels.shape[2]} frames, not {chunk}")
        # the next chunk's start: the VAE encoding of this one's last overlap frames
        torch.cuda.synchronize()
        started = time.perf_counter()
        pipeline.vae.encode(pixels[:, :, -settings.overlap:])
        torch.cuda.synchronize()
        overlap_encode = time.perf_counter() - started
    peak = peak_gib()
    passes = settings.passes_per_step
    durations = timer.durations["transformer"]
    step_seconds = statistics.median(sum(durations[index : index + passes])
                                     for index in range(passes, len(durations), passes))
    vae_chunk = timer.seconds["vae"] + overlap_encode  # the chunk's decode, the next one's overlap encode
    video_seconds = (chunk - settings.overlap) / FPS
    return {
        "height": height, "width": width, "max_tokens": settings.max_tokens, "chunk_frames": chunk,
        "passes_per_step": passes, "steps_timed": steps, "steps_counted": SAMPLE_STEPS,
        "seconds_per_step": step_seconds,
        "vae_seconds_per_chunk": vae_chunk,
        "gpu_seconds_per_video_second": (SAMPLE_STEPS * step_seconds + vae_chunk) / video_seconds,
        "peak_gpu_gib": peak,
    }


def goal_lines(results: list[dict], gpu: str) -> list[str]:
    lines = []
    on = "" if "H100" in gpu else " (not an H100: indicative)"
    by = {(row["size"], row["mode"]): row for row in results if "seconds_per_step" in row}
    for (size, mode), row in by.items():
        if size == "14B":
            met = row["seconds_per_step"] <= GOAL_14B_SECONDS_PER_STEP
            lines.append(f"14B {mode}: {row['seconds_per_step']:.2f} s per step: goal "
                         f"{'met' if met else 'missed'}{on}")
        elif ("14B", mode) in by:
            speed_up = by[("14B", mode)]["seconds_per_step"] / row["seconds_per_step"]
            lines.append(f"1.3B {mode}: {speed_up:.1f}x faster than the 14B: goal "
                         f"{'met' if speed_up >= GOAL_1_3B_SPEED_UP else 'missed'}")
    return lines


def print_tables(results: list[dict], gpu: str) -> None:
    print(f"\n{gpu}; one chunk, {SAMPLE_STEPS} steps counted; per video s over a later chunk's new frames")
    for note in NOTES:
        print(f"note: {note}")
    print(GOAL)
    print(f"\n{'size':>5} {'mode':>8} {'chunk':>13} {'s/step':>7} {'VAE s/chunk':>11} {'GPU s/video s':>13} "
          f"{'peak GiB':>8}")
    for row in results:
        label = f"{row['size']:>5} {row['mode']:>8}"
        if "error" in row:
            print(f"{label} {row['error']}"[:120])
            continue
        shape = f"{row['width']}x{row['height']}x{row['chunk_frames']}"
        print(f"{label} {shape:>13} {row['seconds_per_step']:7.2f} {row['vae_seconds_per_chunk']:11.2f} "
              f"{row['gpu_seconds_per_video_second']:13.2f} {row['peak_gpu_gib']:8.1f}")
    print()
    for line in goal_lines(results, gpu):
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = [mode.value for mode in MemoryMode]
    parser.add_argument("--sizes", nargs="+", default=list(TRANSFORMERS), choices=list(TRANSFORMERS))
    parser.add_argument("--modes", nargs="+", default=modes, choices=modes)
    parser.add_argument("--steps", type=int, default=3, help="sampling steps timed (the first is not counted)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the CPU test's path
    args = parser.parse_args(argv)
    if refuse_without_cuda(args.tiny):
        return 1
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is not counted)")
    geometry = TINY if args.tiny else PUBLISHED
    device = torch.device("cpu" if args.tiny else "cuda")
    results: list[dict] = []
    with cpu_stand_ins(args.tiny):
        gpu = device_name(args.tiny)
        print(f"{gpu}, torch {torch.__version__}", flush=True)
        for size in args.sizes:
            for mode_name in args.modes:
                label = {"size": size, "mode": mode_name}
                try:
                    pipeline = build_pipeline(size, MemoryMode(mode_name), device, geometry)
                    row = {**benchmark(pipeline, geometry, args.steps), **label}
                    del pipeline
                except Exception as error:  # noqa: BLE001 - report and go on with the others
                    traceback.print_exc()
                    row = {**label, "error": f"failed: {type(error).__name__}: {error}"}
                results.append(row)
                print(json.dumps(row), flush=True)
                gc.collect()
                torch.cuda.empty_cache()
        print_tables(results, gpu)
    write_json(args.json, gpu, results, (*NOTES, GOAL, *goal_lines(results, gpu)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
