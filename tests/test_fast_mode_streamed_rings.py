"""The fast mode's rings in host memory, streamed a layer at a time through two device buffers
(_transformer_causal.LayerStreamedRing): every layer a pass sees holds what a resident ring would,
and the block it writes is back in host memory after the pass. On a CUDA GPU the copies run on a
side stream beside the compute, so the same checks there test its synchronisation too."""

from __future__ import annotations

import pytest
import torch

from model.wan_s2v._transformer_causal import BlockPosition, BlockRing, LayerStreamedRing, StepRings

LAYERS, FRAMES, TOKENS, HEADS, HEAD_DIM = 5, 6, 4, 2, 8
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ring_on(device: str, layers: int = LAYERS, pin: bool = False) -> BlockRing:
    return BlockRing.allocate(layers, 1, FRAMES, TOKENS, HEADS, HEAD_DIM, torch.float32, torch.device(device), pin)


def fill(ring: BlockRing, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for tensor in (*ring.keys, *ring.values):
        tensor.copy_(torch.randn(tensor.shape, generator=generator))


def run_pass(ring, slots: slice, block: int, device: str) -> list[torch.Tensor]:
    """What a pass does with each layer: read the ring (here: a sum the next layer's write depends
    on, with a matmul to keep the compute stream busy) and write its block's slots."""
    seen = []
    carry = torch.zeros((), device=device)
    for layer in range(LAYERS):
        keys, values = ring.layer(layer)
        work = torch.randn(256, 256, device=device)
        carry = carry + (work @ work).mean() * 0 + keys.sum() + 2 * values.sum()
        seen.append(carry.clone())
        keys[:, slots] = carry + layer + block
        values[:, slots] = carry - layer - block
    return seen


@pytest.mark.parametrize("device", DEVICES)
def test_a_streamed_ring_reads_and_writes_as_a_resident_one(device, one_cpu_thread):
    resident, host = ring_on(device), ring_on("cpu", pin=device == "cuda")
    fill(resident, 0)
    fill(host, 0)
    stream = torch.cuda.Stream() if device == "cuda" else None
    rings = StepRings([resident], [host], ring_on(device, layers=2), stream)
    for block in range(FRAMES):  # every slot written, the ring wrapped around
        position = BlockPosition(block, 1)
        slots = resident.block_slots(position)
        with rings.for_step(0, position) as ring:
            expected = run_pass(ring, slots, block, device)
        with rings.for_step(1, position) as ring:
            assert isinstance(ring, LayerStreamedRing)
            got = run_pass(ring, slots, block, device)
        assert [value.item() for value in got] == [value.item() for value in expected], f"block {block}"
    for mine, theirs in zip((*host.keys, *host.values), (*resident.keys, *resident.values), strict=True):
        assert torch.equal(mine, theirs.cpu())


def test_a_streamed_ring_gives_its_layers_in_order_only():
    ring = LayerStreamedRing(ring_on("cpu"), ring_on("cpu", layers=2), BlockPosition(0, 1), None)
    ring.layer(0)
    with pytest.raises(ValueError, match="layer 2 asked for after layer 0"):
        ring.layer(2)
    with pytest.raises(ValueError, match="two layers"):
        LayerStreamedRing(ring_on("cpu"), ring_on("cpu", layers=3), BlockPosition(0, 1), None)


def test_rings_in_host_memory_need_buffers():
    with pytest.raises(ValueError, match="need buffers"):
        StepRings([], [ring_on("cpu")])
