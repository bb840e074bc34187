"""Memory of the fast mode's VAE work (fast_pipeline._ClipDecoder) per pixel of video.

Runs the Wan2.1 VAE at its real size with random weights, in float32 on the CPU, at a small video
size, one phase per fresh process (a streamed decode of two latents, a streamed encode of five
frames), and prints each phase's causal state and its peak resident memory above where it started.
During a fast job two decoder states (the history's and the clip's) and the encoder's live at once,
beside one phase's working memory; their sum, per pixel and halved for bf16, is what
model/wan_s2v/memory.py's FAST_VAE_BYTES_PER_PIXEL holds.

    python -m scripts.measure_fast_vae_memory [--height 192] [--width 352]

Everything in it scales with the frame's area (each level of the VAE works at the latent size
times a power of 2). CPU convolutions keep other scratch buffers than cuDNN's, so the peaks are an
estimate of the GPU's; the states are exact (their tensors' sizes).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def run_phase(phase: str, height: int, width: int) -> dict:
    from diffusers import AutoencoderKLWan

    from model.wan_common.vae import StreamingDecoder, StreamingEncoder, WanVideoVAE

    torch.set_num_threads(1)
    vae = WanVideoVAE(AutoencoderKLWan())  # AutoencoderKLWan's defaults are the Wan2.1 VAE's
    latents = torch.randn(1, 16, 2, height // 8, width // 8)
    pixels = torch.rand(1, 3, 5, height, width) * 2 - 1
    start = _resident_bytes()
    if phase == "decode":
        decoder = StreamingDecoder(vae)
        decoder.decode(latents)  # the first latent (1 frame), then one of 4 frames
        cached = decoder._state
    else:
        encoder = StreamingEncoder(vae, keep=1)
        encoder.encode(pixels)  # the first frame, then a group of 4
        cached = encoder._state
    state = sum(tensor.nbytes for tensor in cached if isinstance(tensor, torch.Tensor))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"state": state, "peak": peak - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=352)
    parser.add_argument("--phase", choices=("decode", "encode"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.height, args.width)))
        return
    mib = 2**20
    figures = {}
    for phase in ("decode", "encode"):
        command = [sys.executable, "-m", "scripts.measure_fast_vae_memory", "--phase", phase,
                   "--height", str(args.height), "--width", str(args.width)]
        figures[phase] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"{phase} at {args.width}x{args.height}, float32: state {figures[phase]['state'] / mib:.0f} MiB, "
              f"peak above the start {figures[phase]['peak'] / mib:.0f} MiB (state included)")
    decode, encode = figures["decode"], figures["encode"]
    # two decoder states and the encoder's at once, beside the larger of the two phases' working memory
    during_decode = decode["peak"] + decode["state"] + encode["state"]
    during_encode = encode["peak"] + 2 * decode["state"]
    per_pixel_bf16 = max(during_decode, during_encode) / 2 / (args.height * args.width)
    print(f"fast mode's VAE, bf16: {per_pixel_bf16:.0f} bytes per pixel; "
          f"{per_pixel_bf16 * 704 * 384 / 2**30:.2f} GiB at 704x384")


if __name__ == "__main__":
    main()
