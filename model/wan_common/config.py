"""Constants every Wan2.1-family model shares: the official `shared_config.py`, the Wan2.1 VAE,
umt5-xxl and the names of their files in an official checkpoint folder.

Standard library only.
"""

from __future__ import annotations

# --- sampling --------------------------------------------------------------------------------
NUM_TRAIN_TIMESTEPS = 1000
# the flow-matching solvers a job may name (`sample_solver`); model/wan_common/scheduler.py builds them
SOLVERS = ("unipc", "dpm++")

# --- the Wan2.1 VAE --------------------------------------------------------------------------
# (time, height, width) compression.
VAE_STRIDE = (4, 8, 8)

# --- text encoder ----------------------------------------------------------------------------
TEXT_LEN = 512
# umt5-xxl encoder as published in `models_t5_umt5-xxl-enc-bf16.pth` (the file has no config).
UMT5_XXL_ENCODER_CONFIG = {
    "vocab_size": 256384,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_heads": 64,
    "num_layers": 24,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
}

# --- files of an official checkpoint folder (`Wan-AI/Wan2.1-*`, `Wan-AI/Wan2.2-S2V-14B`) -----
TRANSFORMER_CONFIG_FILE = "config.json"
TRANSFORMER_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
VAE_CHECKPOINT_FILE = "Wan2.1_VAE.pth"
T5_CHECKPOINT_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
T5_TOKENIZER_DIR = "google/umt5-xxl"


def sharded_weights_name(file_name: str) -> str:
    """The safetensors name of a weights file kept as shards beside it (a `.pth` gets the suffix
    `.safetensors`): its shards are `STEM-00001-of-0000N.safetensors` and its index this name plus
    `.index.json` (read_safetensors' and huggingface_hub's naming)."""
    return file_name.removesuffix(".pth").removesuffix(".safetensors") + ".safetensors"


def shard_index_name(file_name: str) -> str:
    """The index of `file_name`'s shards (a path keeps its folder)."""
    return f"{sharded_weights_name(file_name)}.index.json"
