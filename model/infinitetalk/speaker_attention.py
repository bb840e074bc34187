"""InfiniteTalk's audio cross-attention, and how two speakers are told apart in it.

Each latent frame's video tokens attend to that frame's audio tokens only (`AudioCrossAttention`;
the reference's `SingleStreamMutiAttention` in `wan/modules/attention.py`). With two speakers the
audio tokens of both are there, and a 1-D rotary embedding keeps them apart
(`speaker_rope_positions`, from `wan/utils/multitalk_utils.py`): speaker 1's audio tokens sit at
the middle of [0, interval], speaker 2's at the middle of [range - interval, range], and each video
token at a position chosen by which region of the first frame (speaker 1, speaker 2, background)
its self-attention looks at most: inside speaker 1's span, scaled by how strongly it looks, inside
speaker 2's, or the middle of the range for the background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# the reference's normalize_and_scale's epsilon
_SCALE_EPSILON = 1e-8
# query tokens per slice of the speaker map: bounds its memory (the reference holds every
# query's softmax over the first frame at once, ~2 GB per head group at 480p in bf16)
_MAP_QUERY_CHUNK = 4096
# the reference averages the map over heads in this many groups (`get_attn_map_with_target`'s
# split_num); with an odd head count the last head is left out
_MAP_HEAD_GROUPS = 2


def speaker_attention_map(
    query: torch.Tensor, key: torch.Tensor, region_masks: torch.Tensor, tokens_per_frame: int
) -> torch.Tensor:
    """How much each video token's self-attention looks at each region of the first latent frame.

    query, key: the self-attention's [1, tokens, heads, head_dim] after rotary embedding;
    region_masks: [regions, tokens_per_frame] (1 inside). Returns [regions, tokens]: the softmax
    over the first frame's tokens, summed over a region, divided by the region's size and
    averaged over heads.
    """
    if query.shape[0] != 1:
        raise ValueError("the speaker map is computed one sample at a time (batch 1)")
    heads = query.shape[2] // _MAP_HEAD_GROUPS * _MAP_HEAD_GROUPS
    first_frame_keys = key[0, :tokens_per_frame, :heads].transpose(0, 1).to(query.dtype)  # [h, ref, d]
    masks = region_masks.to(query.dtype)
    per_region = masks.t() / masks.sum(dim=1)  # [ref, regions]
    scale = query.shape[-1] ** -0.5
    slices = []
    for start in range(0, query.shape[1], _MAP_QUERY_CHUNK):
        q = query[0, start : start + _MAP_QUERY_CHUNK, :heads].transpose(0, 1) * scale  # [h, n, d]
        attention = (q @ first_frame_keys.transpose(1, 2)).softmax(dim=-1)
        slices.append((attention @ per_region).mean(dim=0))  # [n, regions]
    return torch.cat(slices).t()


def speaker_rope_positions(attention_map: torch.Tensor, rope_range: int, rope_interval: int) -> torch.Tensor:
    """Each video token's 1-D rotary position from `speaker_attention_map`'s [3, tokens] (speaker 1,
    speaker 2, background)."""
    spans = ((0.0, float(rope_interval)), (float(rope_range - rope_interval), float(rope_range)))
    scaled = []
    for region, (low, high) in enumerate(spans):
        row = attention_map[region]
        least, most = row.min(), row.max()
        scaled.append((row - least) / (most - least + _SCALE_EPSILON) * (high - low) + low)
    background = torch.full_like(scaled[0], float(rope_range // 2))
    candidates = torch.stack([*scaled, background], dim=1)
    strongest = attention_map.argmax(dim=0)
    return candidates[torch.arange(candidates.shape[0], device=candidates.device), strongest]


def audio_token_positions(tokens_per_speaker: int, rope_range: int, rope_interval: int) -> torch.Tensor:
    """The 1-D positions of one frame's audio tokens with two speakers: speaker 1's, then speaker 2's."""
    first = (0 + rope_interval) / 2
    second = (rope_range - rope_interval + rope_range) / 2
    return torch.tensor([first] * tokens_per_speaker + [second] * tokens_per_speaker)


def rotate_1d(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Interleaved-pair rotary embedding of x [..., tokens, head_dim] at `positions` [tokens], in float32."""
    head_dim = x.shape[-1]
    frequencies = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=x.device).float() / head_dim))
    angles = (positions.to(x.device).float()[:, None] * frequencies[None, :]).repeat_interleave(2, dim=-1)
    pairs = x.float().unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x.float() * angles.cos() + rotated * angles.sin()).type_as(x)


class AudioCrossAttention(nn.Module):
    """Video tokens of each latent frame attend to that frame's audio tokens."""

    def __init__(self, dim: int, audio_dim: int, heads: int, rope_range: int, rope_interval: int) -> None:
        super().__init__()
        self.heads = heads
        self.rope_range, self.rope_interval = rope_range, rope_interval
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(audio_dim, 2 * dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_tokens: torch.Tensor,
        latent_frames: int,
        video_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states [batch, latent_frames * tokens, dim]; audio_tokens [latent_frames,
        audio tokens, audio_dim]; video_positions [latent_frames * tokens] with two speakers
        (their audio tokens then split in halves), None with one."""
        batch, tokens, dim = hidden_states.shape
        frame_tokens = tokens // latent_frames
        query = self.to_q(hidden_states).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [b, h, L, d]
        key, value = self.to_kv(audio_tokens).unflatten(-1, (2, self.heads, -1)).unbind(2)  # [f, n, h, d]
        if video_positions is not None:
            query = rotate_1d(query, video_positions)
            positions = audio_token_positions(key.shape[1] // 2, self.rope_range, self.rope_interval)
            key = rotate_1d(key.transpose(1, 2), positions).transpose(1, 2)
        # one attention per (sample, latent frame)
        query = query.unflatten(2, (latent_frames, frame_tokens)).permute(0, 2, 1, 3, 4).flatten(0, 1)
        key = key.transpose(1, 2).repeat(batch, 1, 1, 1)
        value = value.transpose(1, 2).repeat(batch, 1, 1, 1)
        out = F.scaled_dot_product_attention(query, key.to(query.dtype), value.to(query.dtype))
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.to_out(out)
