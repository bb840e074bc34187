"""Official Wan2.1 transformer names (`wan/modules/model.py`'s `WanModel`) to diffusers' `WanTransformer3DModel`'s.

The same for T2V and I2V (an I2V model adds the image cross-attention and CLIP embedding names),
as diffusers' own single-file converter names them. A model built on Wan2.1 hands its own
modules' rules to `convert_wan21_key`. Tensors are never reshaped:
only names change, so a loader can rename one tensor at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_ATTENTION = {
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "o": "to_out.0",
    "norm_q": "norm_q",
    "norm_k": "norm_k",
    "k_img": "add_k_proj",
    "v_img": "add_v_proj",
    "norm_k_img": "norm_added_k",
}
_ATTENTION_PART = r"(?P<attn>q|k|v|o|norm_q|norm_k|k_img|v_img|norm_k_img)"
_IMAGE_EMBEDDING = {"0": "norm1", "1": "ff.net.0.proj", "3": "ff.net.2", "4": "norm2"}

Rules = tuple[tuple[re.Pattern[str], str], ...]


def compile_rules(rules: Iterable[tuple[str, str]]) -> Rules:
    """(name pattern, replacement) pairs, the patterns compiled."""
    return tuple((re.compile(pattern), replacement) for pattern, replacement in rules)


# (official name pattern, diffusers' name); named groups `attn` and `mlp` go through the tables above
_WAN21_RULES = compile_rules(
    (
        (r"patch_embedding\.(?P<p>weight|bias)", "patch_embedding.{p}"),
        (r"text_embedding\.0\.(?P<p>weight|bias)", "condition_embedder.text_embedder.linear_1.{p}"),
        (r"text_embedding\.2\.(?P<p>weight|bias)", "condition_embedder.text_embedder.linear_2.{p}"),
        (r"time_embedding\.0\.(?P<p>weight|bias)", "condition_embedder.time_embedder.linear_1.{p}"),
        (r"time_embedding\.2\.(?P<p>weight|bias)", "condition_embedder.time_embedder.linear_2.{p}"),
        (r"time_projection\.1\.(?P<p>weight|bias)", "condition_embedder.time_proj.{p}"),
        (r"img_emb\.proj\.(?P<mlp>[0134])\.(?P<p>weight|bias)", "condition_embedder.image_embedder.{mlp}.{p}"),
        (
            r"blocks\.(?P<i>\d+)\.self_attn\." + _ATTENTION_PART + r"\.(?P<p>weight|bias)",
            "blocks.{i}.attn1.{attn}.{p}",
        ),
        (
            r"blocks\.(?P<i>\d+)\.cross_attn\." + _ATTENTION_PART + r"\.(?P<p>weight|bias)",
            "blocks.{i}.attn2.{attn}.{p}",
        ),
        (r"blocks\.(?P<i>\d+)\.norm3\.(?P<p>weight|bias)", "blocks.{i}.norm2.{p}"),
        (r"blocks\.(?P<i>\d+)\.ffn\.0\.(?P<p>weight|bias)", "blocks.{i}.ffn.net.0.proj.{p}"),
        (r"blocks\.(?P<i>\d+)\.ffn\.2\.(?P<p>weight|bias)", "blocks.{i}.ffn.net.2.{p}"),
        (r"blocks\.(?P<i>\d+)\.modulation", "blocks.{i}.scale_shift_table"),
        (r"head\.head\.(?P<p>weight|bias)", "proj_out.{p}"),
        (r"head\.modulation", "scale_shift_table"),
    )
)
_WAN21_TABLES = {"attn": _ATTENTION, "mlp": _IMAGE_EMBEDDING}


def rename(key: str, rules: Rules, tables: Mapping[str, Mapping[str, str]] | None = None) -> str | None:
    """`key` under the first rule whose pattern matches all of it (a named group found in `tables`
    goes through that table first); None when no rule matches."""
    for pattern, replacement in rules:
        match = pattern.fullmatch(key)
        if match:
            groups = match.groupdict()
            for group, table in (tables or {}).items():
                if group in groups:
                    groups[group] = table[groups[group]]
            return replacement.format(**groups)
    return None


def convert_wan21_key(
    key: str,
    own_rules: Rules = (),
    own_tables: Mapping[str, Mapping[str, str]] | None = None,
    model: str = "the Wan2.1 transformer",
) -> str:
    """diffusers' parameter name for an official Wan2.1 one, or for one of a model's own modules
    under `own_rules` (tried first); KeyError naming `model` for a name it does not have."""
    ours = rename(key, own_rules, own_tables)
    if ours is None:
        ours = rename(key, _WAN21_RULES, _WAN21_TABLES)
    if ours is None:
        raise KeyError(f"not a parameter of {model}: {key!r}")
    return ours
