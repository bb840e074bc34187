"""Seconds of VAE work per clip in the fast mode: ours (fast_pipeline._ClipDecoder: the history
trimmed to the VAE's reach, each frame encoded once, one decoder following the history) against
Live Avatar's way (each clip decoded behind a whole encode of the last 365 frames).

Runs the Wan2.1 VAE at its real size with random weights, in float32 on the CPU (or a GPU with
--device), at a small video size, over four clips of random latents, and prints each clip's seconds
both ways and the largest difference between their pixels (0.0: the same to the bit).

    python -m scripts.benchmark_fast_vae [--size 32] [--threads 2] [--device cpu]

The steady state is the third clip: the second decodes a longer history once, and the last encodes
nothing (its frames are history for no clip). Run as a module from the repository root: the
reference's way is the tests' (tests/test_fast_mode_vae_history.py).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator

import torch
from diffusers import AutoencoderKLWan

from model.wan_common.vae import WanVideoVAE
from model.wan_s2v import fast_pipeline
from model.wan_s2v.config import FAST_LATENT_FRAMES_PER_BLOCK
from tests.test_fast_mode_vae_history import reference_clips

CLIPS = 4


def ours(vae: WanVideoVAE, portrait: fast_pipeline.FastPortrait, clips: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    blocks = [block for clip in clips for block in clip.split(FAST_LATENT_FRAMES_PER_BLOCK, dim=2)]
    decoder = fast_pipeline._ClipDecoder(vae, portrait, len(blocks))
    per_clip = fast_pipeline.BLOCKS_PER_CLIP
    for first in range(0, len(blocks), per_clip):
        yield torch.cat([decoder.decode(blocks[index], index) for index in range(first, first + per_clip)], dim=2)


def timed(clips: Iterator[torch.Tensor], device: torch.device) -> tuple[list[float], list[torch.Tensor]]:
    seconds: list[float] = []
    pixels: list[torch.Tensor] = []
    while True:
        started = time.perf_counter()
        clip = next(clips, None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if clip is None:
            return seconds, pixels
        seconds.append(time.perf_counter() - started)
        pixels.append(clip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32, help="the video's side in pixels (a multiple of 8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vae = WanVideoVAE(AutoencoderKLWan().to(device))  # AutoencoderKLWan's defaults are the Wan2.1 VAE's
    generator = torch.Generator().manual_seed(0)
    side, latent_side = args.size, args.size // 8
    pixels = (torch.rand(1, 3, 1, side, side, generator=generator) * 2 - 1).to(device)
    portrait = fast_pipeline.FastPortrait(
        pixels,
        vae.encode(pixels.expand(-1, -1, 5, -1, -1))[:, :, 1:],
        vae.encode(pixels.expand(-1, -1, fast_pipeline.HISTORY_FRAMES, -1, -1)),
    )
    clips = [torch.randn(1, 16, fast_pipeline.LATENT_FRAMES_PER_CLIP, latent_side, latent_side, generator=generator)
             for _ in range(CLIPS)]
    ways: dict[str, Callable] = {"ours": ours, "Live Avatar's": reference_clips}
    results = {name: timed(way(vae, portrait, clips), device) for name, way in ways.items()}
    print(f"Wan2.1 VAE, {side}x{side}, {device}, {args.threads} threads, float32: seconds per clip")
    for name, (seconds, _) in results.items():
        print(f"  {name:14} " + "  ".join(f"{value:6.1f}" for value in seconds) + f"   total {sum(seconds):6.1f}")
    difference = max((a - b).abs().max().item() for a, b in zip(results["ours"][1], results["Live Avatar's"][1],
                                                                 strict=True))
    print(f"largest pixel difference: {difference}")


if __name__ == "__main__":
    main()
