"""Peak host memory of the Wan2.2-S2V loader on a scaled-down checkpoint in the official layout.

Writes a random-weight checkpoint laid out like `Wan-AI/Wan2.2-S2V-14B` (bfloat16 transformer
shards + index, the real-size Wan2.1 VAE `.pth`, a small umt5 `.pth`, tokenizer and wav2vec2
folders), then loads it with `load_components` in a fresh process and prints that process's peak
resident memory next to the checkpoint's size and the loaded weights' size.

    python -m scripts.measure_loader_memory [--dim 2048] [--layers 10] [--device cpu]

Run as a module from the repository root: it builds the checkpoint with the tests' helpers
(tests.wan_tiny_models), which are not installed.

With --device cpu the loaded model itself lives in host memory, so the figure to read is the peak
above (baseline after imports + loaded weights). On a GPU the weights leave the host one by one.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from model.wan_common.checkpoint import parameters_on_meta
from model.wan_s2v.convert_transformer import convert_transformer_config
from model.wan_s2v.transformer import WanS2VTransformer3DModel
from tests.wan_tiny_models import (
    _OFFICIAL_TRANSFORMER_NAMES,
    TINY_OFFICIAL_TRANSFORMER_CONFIG,
    official_t5_state_dict,
    official_vae_state_dict,
    tiny_umt5,
    tiny_vae,
    write_official_checkpoint,
)

SMALL_T5 = {
    "vocab_size": 4096, "d_model": 512, "d_kv": 64, "d_ff": 1024, "num_heads": 8, "num_layers": 2,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
}
# Wan2.1 VAE at its real size: diffusers' defaults.
REAL_VAE: dict = {}

# Run in a fresh process; VmHWM (unlike ru_maxrss) does not inherit the writer's peak across exec.
MEASURE = """
import json, time, torch
import model.wan_s2v.loader as loader

def status(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
    return int(line.split()[1]) * 1024

baseline = status("VmRSS")
text_from_official = loader.TextEncoder.from_official.__func__
loader.TextEncoder.from_official = classmethod(
    lambda cls, path, tok, device, dtype: text_from_official(cls, path, tok, device, dtype, {t5!r}))
start = time.perf_counter()
components = loader.load_components({folder!r}, {device!r}, torch.bfloat16)
seconds = time.perf_counter() - start
load_peak = status("VmHWM")
models = (components.transformer, components.vae.model, components.text_encoder.model,
          components.speech_encoder.model)
# Weights still backed by the memory-mapped files are read in by their first use: touch them all.
loaded = sum(float(t.float().sum()) * 0 + t.nbytes for m in models for t in m.state_dict().values())
print(json.dumps({{"baseline": baseline, "load_peak": load_peak, "touched_peak": status("VmHWM"),
                  "loaded_bytes": loaded, "seconds": seconds}}))
"""


def write_checkpoint(folder: Path, dim: int, layers: int) -> int:
    official_config = {
        **TINY_OFFICIAL_TRANSFORMER_CONFIG,
        "dim": dim, "ffn_dim": 4 * dim, "num_heads": dim // 128, "num_layers": layers,
        "audio_dim": 1024, "freq_dim": 256, "audio_inject_layers": list(range(0, layers, 3)),
    }
    with parameters_on_meta():
        model = WanS2VTransformer3DModel(**convert_transformer_config(official_config))
    state = {}
    for key, param in model.state_dict().items():
        name = key
        for pattern, replacement in _OFFICIAL_TRANSFORMER_NAMES:
            name = re.sub(pattern, replacement, name)
        state[name] = (torch.randn(param.shape) * 0.02).to(torch.bfloat16)
    del model
    write_official_checkpoint(
        folder, state, official_config, official_vae_state_dict(tiny_vae(config=REAL_VAE)),
        official_t5_state_dict(tiny_umt5(config=SMALL_T5)), shard_bytes=256 * 2**20,
    )
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2048, help="transformer width (multiple of 128)")
    parser.add_argument("--layers", type=int, default=10, help="transformer blocks")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Wan2.2-S2V-scaled"
        checkpoint_bytes = write_checkpoint(folder, args.dim, args.layers)
        code = MEASURE.format(t5=SMALL_T5, folder=str(folder), device=args.device)
        result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
        figures = json.loads(result.stdout.strip().splitlines()[-1])
    gib = 2**30
    baseline = figures["baseline"]
    print(f"checkpoint on disk:            {checkpoint_bytes / gib:6.2f} GiB")
    print(f"weights after loading:         {figures['loaded_bytes'] / gib:6.2f} GiB on {args.device}")
    print(f"host RSS after imports:        {baseline / gib:6.2f} GiB")
    for label, key in (("peak RSS during load", "load_peak"), ("peak RSS, weights touched", "touched_peak")):
        peak = figures[key]
        print(f"{label + ':':30s} {peak / gib:6.2f} GiB = imports + {(peak - baseline) / gib:.2f} GiB "
              f"({(peak - baseline) / checkpoint_bytes:.2f} x checkpoint)")
    print(f"load time:                     {figures['seconds']:6.1f} s")


if __name__ == "__main__":
    main()
