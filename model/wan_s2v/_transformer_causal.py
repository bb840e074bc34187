"""Self-attention over a cache, for generating video a block of latent frames at a time.

The fast mode (Live Avatar's causal Wan2.2-S2V) never puts the conditioning tokens (reference
image, motion history) in the sequence of a denoising pass. They go through the transformer once
per job ("prefill"), at timestep zero, and every layer keeps their keys (before RoPE) and values.
A denoising pass then holds only the current block's video tokens; each layer writes the block's
keys (after RoPE, at the block's absolute frame positions) and values into a ring of the last
`cache_frames` latent frames, and attends over that ring plus the conditioning tokens, whose keys
get RoPE at every pass because the reference image's time position follows the video.

Each denoising step index has its own ring: at step i a block sees earlier blocks as they were at
step i, which is how the reference generates (one cache per sampling step).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttention


@dataclasses.dataclass
class ConditionCache:
    """Per layer: the conditioning tokens' keys (before RoPE) and values, [B, n, heads, head_dim]."""

    keys: list[torch.Tensor] = dataclasses.field(default_factory=list)
    values: list[torch.Tensor] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class BlockRing:
    """Per layer: the roped keys and values of the last `cache_frames` latent frames.

    Frame f lives in slot f % cache_frames; `frames_seen` counts frames written so far.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    tokens_per_frame: int
    cache_frames: int

    @classmethod
    def allocate(
        cls,
        num_layers: int,
        batch: int,
        cache_frames: int,
        tokens_per_frame: int,
        heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        pin_memory: bool = False,
    ) -> BlockRing:
        """Uninitialised: a slot is only read once this job has written it."""
        shape = (batch, cache_frames * tokens_per_frame, heads, head_dim)

        def new() -> torch.Tensor:
            return torch.empty(shape, dtype=dtype, device=device, pin_memory=pin_memory)

        keys, values = [new() for _ in range(num_layers)], [new() for _ in range(num_layers)]
        return cls(keys, values, tokens_per_frame, cache_frames)

    @property
    def nbytes(self) -> int:
        return sum(tensor.nbytes for tensor in (*self.keys, *self.values))

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s keys and values, which its pass writes its block into."""
        return self.keys[index], self.values[index]

    def block_slots(self, position: BlockPosition) -> slice:
        """The token slots of the block at `position` (the only ones a pass writes)."""
        start = position.first_frame % self.cache_frames * self.tokens_per_frame
        return slice(start, start + position.num_frames * self.tokens_per_frame)


class LayerStreamedRing:
    """A ring in host memory, seen by one denoising pass a layer at a time through two device
    buffers of one layer each: while layer i computes, layer i + 1 is copied in on a side CUDA
    stream, and once layer i is done its block's slots go back to host memory on that stream. The
    copies overlap with compute, and the device holds two layers of the ring instead of all of it.
    A pass asks for its layers in order (forward_block), and `finish` ends it. Without a stream (off
    CUDA) the same copies run in the same order, in line.

    The side stream waits for the compute stream before each write-back (the layer's attention has
    been queued by then) and at the start of the pass (the buffers' last readers); the compute
    stream waits for each layer's load, and for every copy at `finish`, so nothing after the pass
    (the next pass, the buffers' release) can overtake them.
    """

    def __init__(
        self, host: BlockRing, buffers: BlockRing, position: BlockPosition, stream: torch.cuda.Stream | None
    ) -> None:
        if len(buffers.keys) != 2:
            raise ValueError("a streamed ring's buffers are two layers")
        self.host, self.buffers, self.stream = host, buffers, stream
        self.tokens_per_frame, self.cache_frames = host.tokens_per_frame, host.cache_frames
        self._slots = host.block_slots(position)
        self._compute = torch.cuda.current_stream(buffers.keys[0].device) if stream is not None else None
        self._loaded: dict[int, torch.cuda.Event] = {}
        self._current = -1
        self._side_waits_for_compute()
        self._load(0)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index != self._current + 1:
            raise ValueError(f"layer {index} asked for after layer {self._current}: a pass goes through them in order")
        if self._current >= 0:
            self._write_back(self._current)
        if index + 1 < len(self.host.keys):
            self._load(index + 1)
        if self._compute is not None:
            self._compute.wait_event(self._loaded.pop(index))
        self._current = index
        return self.buffers.layer(index % 2)

    def finish(self) -> None:
        if self._current >= 0:
            self._write_back(self._current)
        if self._compute is not None and self.stream is not None:
            self._compute.wait_stream(self.stream)

    def _side_waits_for_compute(self) -> None:
        if self.stream is not None and self._compute is not None:
            self.stream.wait_stream(self._compute)

    def _on_side(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _load(self, index: int) -> None:
        keys, values = self.buffers.layer(index % 2)
        host_keys, host_values = self.host.layer(index)
        with self._on_side():
            keys.copy_(host_keys, non_blocking=True)
            values.copy_(host_values, non_blocking=True)
            if self.stream is not None:
                self._loaded[index] = self.stream.record_event()

    def _write_back(self, index: int) -> None:
        keys, values = self.buffers.layer(index % 2)
        host_keys, host_values = self.host.layer(index)
        self._side_waits_for_compute()
        with self._on_side():
            host_keys[:, self._slots].copy_(keys[:, self._slots], non_blocking=True)
            host_values[:, self._slots].copy_(values[:, self._slots], non_blocking=True)


class StepRings:
    """One ring per denoising step. The first ones live on the execution device; those that do not
    fit there live in pinned host memory, each streamed through two layers' `buffers` on the device
    for its step (LayerStreamedRing: a ring's worth of transfer per step, beside the compute)."""

    def __init__(
        self,
        resident: list[BlockRing],
        streamed: list[BlockRing] | None = None,
        buffers: BlockRing | None = None,
        stream: torch.cuda.Stream | None = None,
    ) -> None:
        if streamed and buffers is None:
            raise ValueError("rings in host memory need buffers on the device")
        self.resident = resident
        self.streamed = streamed or []
        self.buffers = buffers
        self.stream = stream

    @contextlib.contextmanager
    def for_step(self, step: int, position: BlockPosition) -> Iterator[BlockRing | LayerStreamedRing]:
        if step < len(self.resident):
            yield self.resident[step]
            return
        assert self.buffers is not None
        ring = LayerStreamedRing(self.streamed[step - len(self.resident)], self.buffers, position, self.stream)
        try:
            yield ring
        finally:
            ring.finish()


@dataclasses.dataclass(frozen=True)
class BlockPosition:
    """Where a block sits: its first latent frame (absolute, from the start of the video) and length."""

    first_frame: int
    num_frames: int

    def __post_init__(self) -> None:
        if self.first_frame < 0 or self.num_frames < 1:
            raise ValueError(f"invalid block position {self}")


class PrefillAttention:
    """Full self-attention among the conditioning tokens that also records their keys and values."""

    def __init__(self, cache: ConditionCache, rotary: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.cache = cache
        self.rotary = rotary

    def __call__(self, attn: WanAttention, hidden_states: torch.Tensor) -> torch.Tensor:
        query, key, value = project_qkv(attn, hidden_states)
        self.cache.keys.append(key)
        self.cache.values.append(value)
        return attend(attn, apply_rotary(query, *self.rotary), apply_rotary(key, *self.rotary), value)


class CachedBlockAttention:
    """A block's self-attention for one layer: write the block into the ring, attend over the ring
    (up to the block) and the conditioning tokens."""

    def __init__(
        self,
        layer: int,
        ring: BlockRing | LayerStreamedRing,
        condition: ConditionCache,
        position: BlockPosition,
        block_rotary: tuple[torch.Tensor, torch.Tensor],
        condition_rotary: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        if position.num_frames > ring.cache_frames or ring.cache_frames % position.num_frames:
            raise ValueError(f"a ring of {ring.cache_frames} frames cannot hold blocks of {position.num_frames}")
        self.layer = layer
        self.ring = ring
        # asked for here, outside the block (which may be compiled): a streamed ring copies as it goes
        self.ring_keys, self.ring_values = ring.layer(layer)
        self.condition = condition
        self.position = position
        self.block_rotary = block_rotary
        self.condition_rotary = condition_rotary

    def __call__(self, attn: WanAttention, hidden_states: torch.Tensor) -> torch.Tensor:
        query, key, value = project_qkv(attn, hidden_states)
        query = apply_rotary(query, *self.block_rotary)
        ring, per_frame = self.ring, self.ring.tokens_per_frame
        slot = self.position.first_frame % ring.cache_frames * per_frame
        ring_keys, ring_values = self.ring_keys, self.ring_values
        ring_keys[:, slot : slot + key.shape[1]] = apply_rotary(key, *self.block_rotary)
        ring_values[:, slot : slot + value.shape[1]] = value
        # Until the ring has wrapped, only the slots up to this block hold frames.
        filled = min(self.position.first_frame + self.position.num_frames, ring.cache_frames) * per_frame
        condition_keys = apply_rotary(self.condition.keys[self.layer], *self.condition_rotary)
        keys = torch.cat([ring_keys[:, :filled], condition_keys.to(ring_keys.dtype)], dim=1)
        values = torch.cat([ring_values[:, :filled], self.condition.values[self.layer]], dim=1)
        return attend(attn, query, keys, values)


def project_qkv(attn: WanAttention, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wan's q/k/v projections with their RMS norms, as [B, N, heads, head_dim]."""
    query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
    value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
    return query, key, value


def attend(attn: WanAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention [B, N, heads, head_dim] -> the output projection [B, N, dim]."""
    out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
    out = out.transpose(1, 2).flatten(2, 3).type_as(query)
    return attn.to_out[1](attn.to_out[0](out))


def apply_rotary(tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of the head dimension by the tables of RotaryEmbedding."""
    even, odd = tokens.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(tokens)
