"""Key names of the official umt5-xxl encoder (`wan/modules/t5.py`) in transformers' UMT5EncoderModel.

The official encoder keeps a relative position table in every block, like UMT5; its gated FFN
calls the activated branch `gate` and the linear one `fc1`, transformers `wi_0` and `wi_1`.

The encoder's file may also be kept as safetensors shards under its own tensor names
(scripts/shard_weights.py): the baked image holds it so, because the one 11.4 GB `.pth` is
over the layer size registries accept (GHCR: 10 GB).
"""

from __future__ import annotations

import re

from .config import T5_CHECKPOINT_FILE, shard_index_name

_BLOCK_PARTS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_TOP_LEVEL = {
    "token_embedding.weight": "shared.weight",
    "norm.weight": "encoder.final_layer_norm.weight",
}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


def convert_t5_key(official_key: str) -> str:
    """The UMT5EncoderModel name of an official T5 encoder tensor (unknown names pass through)."""
    if official_key in _TOP_LEVEL:
        return _TOP_LEVEL[official_key]
    match = _BLOCK_KEY.fullmatch(official_key)
    if match and match.group(2) in _BLOCK_PARTS:
        return f"encoder.block.{match.group(1)}.{_BLOCK_PARTS[match.group(2)]}"
    return official_key


T5_SHARD_INDEX_FILE = shard_index_name(T5_CHECKPOINT_FILE)
