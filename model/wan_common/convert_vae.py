"""Key names of the official Wan2.1 VAE (`wan/modules/vae2_1.py`) in diffusers' AutoencoderKLWan.

Both keep the same layers in the same order. The official model lists its blocks flat
(`encoder.downsamples.N`, `decoder.upsamples.N`) and numbers the layers inside a residual block by
position; diffusers names them, and groups the decoder's flat list into stages of
`num_res_blocks + 1` residual blocks followed by one upsampler (none after the last stage).
"""

from __future__ import annotations

import re

_RESIDUAL_PARTS = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2.weight": "conv1.weight",
    "residual.2.bias": "conv1.bias",
    "residual.3.gamma": "norm2.gamma",
    "residual.6.weight": "conv2.weight",
    "residual.6.bias": "conv2.bias",
    "shortcut.weight": "conv_shortcut.weight",
    "shortcut.bias": "conv_shortcut.bias",
}
_MIDDLE_BLOCKS = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}
_OUTER = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
}
_FLAT_BLOCK = re.compile(r"(encoder|decoder)\.(downsamples|upsamples|middle)\.(\d+)\.(.+)")


def convert_vae_key(official_key: str, num_res_blocks: int = 2) -> str:
    """The AutoencoderKLWan name of an official VAE tensor (unknown names pass through)."""
    module, _, leaf = official_key.rpartition(".")
    if module in _OUTER:
        return f"{_OUTER[module]}.{leaf}"
    match = _FLAT_BLOCK.fullmatch(official_key)
    if match is None:
        return official_key
    side, blocks, index, rest = match.groups()
    rest = _RESIDUAL_PARTS.get(rest, rest)
    if blocks == "middle":
        return f"{side}.mid_block.{_MIDDLE_BLOCKS[index]}.{rest}"
    if blocks == "downsamples":
        return f"encoder.down_blocks.{index}.{rest}"
    stage, position = divmod(int(index), num_res_blocks + 2)
    if position <= num_res_blocks:
        return f"decoder.up_blocks.{stage}.resnets.{position}.{rest}"
    return f"decoder.up_blocks.{stage}.upsamplers.0.{rest}"
