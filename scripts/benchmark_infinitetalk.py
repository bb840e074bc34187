"""Speed and memory of InfiniteTalk (Wan2.1-I2V-14B + its audio modules) on this GPU, per memory
mode, generation mode, size and number of speakers.

The transformer has the real 14B architecture (`InfiniteTalkTransformer3DModel()`'s defaults are
the published sizes) with random bf16 weights (speed does not depend on the values), placed as the
worker places it for each memory mode (model/infinitetalk/memory.py, wan_common/placement.py); the
VAE is the real Wan2.1 one, random. A random rank-32 LoRA in lightx2v's (ComfyUI's) spelling is
attached the way the backend attaches lightx2v's (`attach_lightx2v_lora`) and is active in the
fast runs. A job of two clips (153 frames at 25 fps: 81, then 72 new) runs through the worker's
own `generate_clips` (model/infinitetalk/pipeline.py), with one speaker and with two (the speaker
map adds work to every block).

Not loaded: umT5-xxl, CLIP's vision tower and wav2vec2. The worker runs them once per job (the
prompt's states are cached), not per step or clip: the prompts are random umT5-shaped states
[1, 512, 4096], the image features random [1, 257, 1280] and the speech features random
[frames, 12, 768]. Their weights (umT5 ~11 GB, CLIP ~1.3 GB on the GPU in the full mode) are not
in the peak memory printed.

    python scripts/benchmark_infinitetalk.py                  # every memory mode, quality and fast
    python scripts/benchmark_infinitetalk.py --modes fp8 --generations fast --json out.json

quality (40 steps, 3 guidance passes each): each clip runs --steps steps, and the clip's figures
are extrapolated to 40 steps from the median step (each clip's first step, which carries its
conditioning, not counted); the output says so. fast (4 steps, 2 passes, the LoRA active): timed
as it runs. Printed per run: seconds per step (all its passes), time to the first clip (from the
start of generation to the first decoded, colour-matched clip), GPU seconds per second of video
over the second clip (72 new frames = 2.88 s: the steady state, with its motion re-encode), split
into transformer / VAE / colour correction, and the peak GPU memory. The goal checked: fast
<= 4 GPU s per video s at 480p (640x640, 832x448) on an H100.
"""

# ruff: noqa: E402 - the repository root goes on the import path before the project's imports

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python scripts/benchmark_infinitetalk.py` from any folder
    sys.path.insert(0, str(ROOT))

import argparse
import contextlib
import dataclasses
import gc
import json
import statistics
import tempfile
import traceback
from typing import Any

import torch

import model.infinitetalk.pipeline as pipeline_module
from model.infinitetalk.config import CLIP_FRAMES, FPS, MOTION_FRAMES, SAMPLE_STEPS, TEXT_LEN
from model.infinitetalk.convert_transformer import convert_transformer_key
from model.infinitetalk.layout import speaker_regions
from model.infinitetalk.lora import PREFIX, attach_lightx2v_lora
from model.infinitetalk.memory import FP8_BLOCK_LAYERS
from model.infinitetalk.pipeline import FAST, QUALITY, Prompts, generate_clips
from model.infinitetalk.transformer import InfiniteTalkTransformer3DModel
from model.wan_common.lora import LoraAdapter
from model.wan_common.memory import MemoryMode
from model.wan_common.placement import place_transformer
from model.wan_common.vae import WanVideoVAE
from scripts.benchmark_common import (
    StepClock,
    cpu_stand_ins,
    device_name,
    peak_gib,
    refuse_without_cuda,
    write_json,
)
from scripts.benchmark_gpu import SplitTimer, build_on_gpu

# (height, width) of the 480p bucket's sizes the issue names
SIZES = {"640x640": (640, 640), "832x448": (448, 832)}
LORA_RANK = 32
# lightx2v's LoRA covers every linear of Wan2.1's blocks, by official name
LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2")
IMAGE_TOKENS = 257
GOAL_GPU_SECONDS_PER_VIDEO_SECOND = 4.0
GOAL = (f"goal: fast <= {GOAL_GPU_SECONDS_PER_VIDEO_SECOND:g} GPU s per video s at 480p (640x640, 832x448) "
        "on an H100")
NOTES = (
    "random weights of the real 14B transformer and Wan2.1 VAE; umT5, CLIP and wav2vec2 not loaded (random "
    "prompt states, image and speech features: they run once per job) and not in the peak memory",
    f"quality: each clip timed over a few steps and extrapolated to {SAMPLE_STEPS} (the median step, each clip's "
    "first not counted); fast: 4 steps timed as they run, the random rank-32 LoRA active",
)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What the `--tiny` CPU path shrinks: the sizes, the clips' frames and the models' configs."""

    sizes: dict[str, tuple[int, int]]
    clip_frames: int
    motion_frames: int
    transformer: dict[str, Any]
    vae: dict[str, Any]
    dtype: torch.dtype


PUBLISHED = Geometry(SIZES, CLIP_FRAMES, MOTION_FRAMES, {}, {}, torch.bfloat16)
TINY = Geometry(
    {"640x640": (32, 32), "832x448": (16, 32)}, 9, 5,
    {"num_attention_heads": 2, "attention_head_dim": 12, "in_channels": 12, "out_channels": 4, "text_dim": 16,
     "freq_dim": 16, "ffn_dim": 32, "num_layers": 2, "image_dim": 16, "added_kv_proj_dim": 24, "audio_layers": 2,
     "audio_channels": 8, "audio_intermediate_dim": 16, "audio_output_dim": 8, "audio_context_tokens": 4},
    {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 0,
     "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4},
    torch.float32,
)


@dataclasses.dataclass
class Rig:
    """The placed models and the job's random stand-ins for what runs once per job."""

    transformer: InfiniteTalkTransformer3DModel
    vae: WanVideoVAE
    lora: LoraAdapter
    prompts: Prompts
    image_tokens: torch.Tensor
    device: torch.device
    geometry: Geometry
    warm_sizes: set[tuple[int, int]] = dataclasses.field(default_factory=set)


def write_random_lora(folder: Path, transformer: InfiniteTalkTransformer3DModel) -> Path:
    """A rank-32 LoRA of every linear lightx2v's covers, in ComfyUI's spelling, random values."""
    from safetensors.torch import save_file

    parameters = dict(transformer.named_parameters())
    tensors = {}
    for block in range(transformer.config.num_layers):
        for target in LORA_TARGETS:
            name = f"blocks.{block}.{target}"
            out_features, in_features = parameters[convert_transformer_key(f"{name}.weight")].shape
            tensors[f"{PREFIX}{name}.lora_down.weight"] = torch.randn(LORA_RANK, in_features) * 0.01
            tensors[f"{PREFIX}{name}.lora_up.weight"] = torch.randn(out_features, LORA_RANK) * 0.01
    path = folder / "lightx2v_random.safetensors"
    save_file({key: value.to(torch.bfloat16) for key, value in tensors.items()}, str(path))
    return path


def build_rig(mode: MemoryMode, device: torch.device, geometry: Geometry, folder: Path) -> Rig:
    from diffusers import AutoencoderKLWan

    transformer = build_on_gpu(lambda: InfiniteTalkTransformer3DModel(**geometry.transformer), geometry.dtype, device)
    if mode is not MemoryMode.FULL:
        transformer.to("cpu")  # where the worker's loader leaves it for these modes
        torch.cuda.empty_cache()
    lora = attach_lightx2v_lora(transformer, write_random_lora(folder, transformer))
    if not isinstance(lora, LoraAdapter):
        raise lora
    place_transformer(transformer, mode, device, FP8_BLOCK_LAYERS)  # after the LoRA, as the worker does
    vae = WanVideoVAE(build_on_gpu(lambda: AutoencoderKLWan(**geometry.vae), torch.float32, device))
    config = transformer.config
    text = torch.randn(1, TEXT_LEN, config.text_dim, device=device, dtype=geometry.dtype)
    prompts = Prompts(text, torch.randn_like(text))
    image_tokens = torch.randn(1, IMAGE_TOKENS, config.image_dim, device=device, dtype=geometry.dtype)
    torch.cuda.empty_cache()
    return Rig(transformer, vae, lora, prompts, image_tokens, device, geometry)


def warm_up(rig: Rig, height: int, width: int) -> None:
    """A VAE round trip of a clip at this size, once per size: its first convolutions at a new shape
    pick their kernels, which would otherwise count in the first run's time to the first clip."""
    if (height, width) in rig.warm_sizes:
        return
    latents = rig.vae.encode(torch.zeros(1, 3, rig.geometry.clip_frames, height, width, device=rig.device))
    rig.vae.decode(latents)
    rig.warm_sizes.add((height, width))


def benchmark(rig: Rig, size: str, generation: str, speakers: int, steps: int) -> dict:
    """A job of two clips; its figures (see the module's docstring)."""
    height, width = rig.geometry.sizes[size]
    clip_frames, motion_frames = rig.geometry.clip_frames, rig.geometry.motion_frames
    new_frames = clip_frames - motion_frames
    config = rig.transformer.config
    speech = [torch.randn(clip_frames + new_frames, config.audio_layers, config.audio_channels)
              for _ in range(speakers)]
    portrait = torch.rand(3, height, width, device=rig.device) * 2 - 1
    regions = None
    if speakers == 2:
        regions = speaker_regions((height, width), (height, width), (height // 8, width // 8))
    sampling = FAST if generation == "fast" else dataclasses.replace(QUALITY, steps=steps)
    counted = SAMPLE_STEPS if generation == "quality" else sampling.steps

    timer = SplitTimer(("transformer", "vae", "colour"))
    patches = [(rig.transformer, "forward", "transformer"), (WanVideoVAE, "encode", "vae"),
               (WanVideoVAE, "decode", "vae"), (pipeline_module, "match_colours", "colour")]
    clock = StepClock()
    clip_ends: list[float] = []
    split_after_first: dict[str, float] = {}
    passes_before_second = 0
    warm_up(rig, height, width)
    torch.cuda.reset_peak_memory_stats()
    active = rig.lora.active() if generation == "fast" else contextlib.nullcontext()
    with active, timer.patched(patches):
        clock.start()
        for _ in generate_clips(
            rig.transformer, rig.vae, lambda pixels: rig.image_tokens, lambda start: portrait, rig.prompts, speech,
            sampling, 42, speaker_regions=regions, clip_frames=clip_frames, motion_frames=motion_frames,
            on_step=clock.tick, device=rig.device,
        ):
            clip_ends.append(clock.now())
            if len(clip_ends) == 1:
                split_after_first = timer.snapshot()
                passes_before_second = len(timer.durations["transformer"])
    if len(clip_ends) != 2:
        raise RuntimeError(f"the job made {len(clip_ends)} clips, not 2")
    step_seconds = clock.later_step_seconds()
    # a clip's time besides its steps: its conditioning or motion encode, the decode, the colours
    overheads = [clip_ends[0] - sampling.steps * step_seconds,
                 clip_ends[1] - clip_ends[0] - sampling.steps * step_seconds]
    first_clip = overheads[0] + counted * step_seconds
    second_clip = overheads[1] + counted * step_seconds
    video_seconds = new_frames / FPS
    second = {part: timer.seconds[part] - split_after_first[part] for part in timer.parts}
    # the second clip's passes at their median, as many as `counted` steps run
    passes = timer.durations["transformer"][passes_before_second:]
    second["transformer"] = statistics.median(passes) * len(passes) * counted / sampling.steps
    return {
        "size": size, "height": height, "width": width, "generation": generation, "speakers": speakers,
        "steps_timed": sampling.steps, "steps_counted": counted, "extrapolated": counted != sampling.steps,
        "seconds_per_step": step_seconds,
        "first_clip_seconds": first_clip,
        "gpu_seconds_per_video_second": second_clip / video_seconds,
        **{f"{part}_seconds_per_video_second": seconds / video_seconds for part, seconds in second.items()},
        "peak_gpu_gib": peak_gib(),
    }


def goal_verdict(row: dict, gpu: str) -> str:
    if row["generation"] != "fast" or "error" in row or "skipped" in row:
        return ""
    met = row["gpu_seconds_per_video_second"] <= GOAL_GPU_SECONDS_PER_VIDEO_SECOND
    return ("goal met" if met else "goal missed") + ("" if "H100" in gpu else " (not an H100)")


def print_tables(results: list[dict], gpu: str) -> None:
    print(f"\n{gpu}; two clips of {CLIP_FRAMES} frames at {FPS} fps; per video s over the second clip")
    for note in NOTES:
        print(f"note: {note}")
    print(GOAL)
    header = (f"{'size':>8} {'speakers':>8} {'steps':>9} {'s/step':>7} {'first clip s':>12} {'GPU s/video s':>13} "
              f"{'transformer':>11} {'VAE':>6} {'colour':>6} {'peak GiB':>8}")
    for mode in dict.fromkeys(row["mode"] for row in results):
        for generation in ("quality", "fast"):
            rows = [row for row in results if row["mode"] == mode and row.get("generation") == generation]
            if not rows:
                continue
            print(f"\n{mode} / {generation}")
            print(header)
            for row in rows:
                label = f"{row['size']:>8} {row['speakers']:>8}"
                if "error" in row or "skipped" in row:
                    print(f"{label} {row.get('error') or row['skipped']}"[:120])
                    continue
                steps = f"{row['steps_timed']}->{row['steps_counted']}" if row["extrapolated"] else str(
                    row["steps_timed"])
                per_video_second = [row[f"{part}_seconds_per_video_second"]
                                    for part in ("gpu", "transformer", "vae", "colour")]
                print(f"{label} {steps:>9} {row['seconds_per_step']:7.2f} {row['first_clip_seconds']:12.2f} "
                      f"{per_video_second[0]:13.2f} {per_video_second[1]:11.2f} {per_video_second[2]:6.2f} "
                      f"{per_video_second[3]:6.2f} {row['peak_gpu_gib']:8.1f}  {goal_verdict(row, gpu)}")
    for row in results:
        if "generation" not in row:
            print(f"{row['mode']}: failed: {row['error'][:100]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = [mode.value for mode in MemoryMode]
    parser.add_argument("--modes", nargs="+", default=modes, choices=modes)
    parser.add_argument("--generations", nargs="+", default=["quality", "fast"], choices=["quality", "fast"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--speakers", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--steps", type=int, default=3,
                        help="quality steps timed per clip (the first is not counted), extrapolated to "
                             f"{SAMPLE_STEPS}")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the CPU test's path
    args = parser.parse_args(argv)
    if refuse_without_cuda(args.tiny):
        return 1
    if args.steps < 2:
        parser.error("--steps must be at least 2 (each clip's first step is not counted)")
    geometry = TINY if args.tiny else PUBLISHED
    device = torch.device("cpu" if args.tiny else "cuda")
    with cpu_stand_ins(args.tiny):
        gpu = device_name(args.tiny)
        print(f"{gpu}, torch {torch.__version__}", flush=True)
        results = run_all(args, geometry, device)
        print_tables(results, gpu)
    write_json(args.json, gpu, results, (*NOTES, GOAL))
    return 0


def run_all(args: argparse.Namespace, geometry: Geometry, device: torch.device) -> list[dict]:
    results: list[dict] = []
    folder = Path(tempfile.mkdtemp(prefix="benchmark-infinitetalk-"))
    for mode_name in args.modes:
        mode = MemoryMode(mode_name)
        try:
            rig = build_rig(mode, device, geometry, folder)
        except Exception as error:  # noqa: BLE001 - report and go on with the other modes
            traceback.print_exc()
            results.append({"mode": mode.value, "error": f"could not place the models: {type(error).__name__}: "
                                                         f"{error}"})
            gc.collect()
            torch.cuda.empty_cache()
            continue
        for generation in args.generations:
            for size in args.sizes:
                for speakers in args.speakers:
                    label = {"mode": mode.value, "generation": generation, "size": size, "speakers": speakers}
                    if speakers == 2 and mode is MemoryMode.OFFLOAD:
                        results.append({**label, "skipped": "skipped: the worker refuses two speakers in offload"})
                        continue
                    try:
                        row = benchmark(rig, size, generation, speakers, args.steps)
                    except Exception as error:  # noqa: BLE001
                        traceback.print_exc()
                        row = {"error": f"failed: {type(error).__name__}: {error}"}
                        torch.cuda.empty_cache()
                    row.update(label)
                    results.append(row)
                    print(json.dumps(row), flush=True)
        del rig
        gc.collect()
        torch.cuda.empty_cache()
    return results


if __name__ == "__main__":
    sys.exit(main())
