"""Which RunPod compute a backend needs: GPU pools, smallest class that fits first, or CPU flavors.

Facts from the runpod/docs repository: the pool ids and the cards in each come from
`references/gpu-types.mdx` ("GPU pools"), the Blackwell pools from `flash/configuration/gpu-types.mdx`
(`GpuGroup`); "up to three GPU types in priority order" from
`serverless/endpoints/endpoint-configurations.mdx`; the CPU flavor ids and `vcpuCount` from
`api-reference-v2/openapi.json` (`CreateCpuConfig`).
"""

from __future__ import annotations

import dataclasses
import math

from handler.settings import MAX_EXECUTION_TIMEOUT_SECONDS, MIN_EXECUTION_TIMEOUT_SECONDS
from model.declaration import CpuNeed, GpuNeed
from model.registry import BACKENDS as REGISTRY
from model.registry import declaration_of
from model.speed import execution_timeout

BACKENDS = tuple(sorted(REGISTRY, key=lambda name: not REGISTRY[name].needs_gpu))  # the GPU one first


@dataclasses.dataclass(frozen=True)
class GpuClass:
    memory_gb: int
    # Within a class the newer generation first: faster for the same memory.
    pools: tuple[str, ...]


# Smallest first.
GPU_CLASSES = (
    GpuClass(24, ("ADA_24", "AMPERE_24")),  # RTX 4090 | L4, A5000, RTX 3090
    GpuClass(32, ("ADA_32_PRO",)),  # RTX 5090
    GpuClass(48, ("ADA_48_PRO", "AMPERE_48")),  # L40, L40S, RTX 6000 Ada | A6000, A40
    GpuClass(80, ("ADA_80_PRO", "AMPERE_80")),  # H100 | A100 80GB
    GpuClass(96, ("BLACKWELL_96",)),  # RTX PRO 6000 Blackwell (Server, Workstation, Max-Q)
    GpuClass(141, ("HOPPER_141",)),  # H200
    GpuClass(180, ("BLACKWELL_180",)),  # B200
)
# RunPod's serverless pricing table gives no price for these, so data/costs.toml has none: the
# price order ranks their class after every priced one that fits.
UNPRICED_POOLS = ("ADA_32_PRO",)
KNOWN_GPU_POOLS = tuple(pool for gpu_class in GPU_CLASSES for pool in gpu_class.pools)

MAX_GPU_PRIORITIES = 3

# Each GPU backend's declared need, and the memory modes some GPU backend declares (--memory-mode's choices).
GPU_NEEDS = {
    name: entry.deploy.compute for name, entry in REGISTRY.items() if isinstance(entry.deploy.compute, GpuNeed)
}
MEMORY_MODES = tuple(dict.fromkeys(mode for need in GPU_NEEDS.values() for mode in need.memory_gb))


@dataclasses.dataclass(frozen=True)
class CpuConfig:
    flavor: str
    vcpu_count: int


@dataclasses.dataclass(frozen=True)
class Compute:
    """Either GPU pools in priority order or CPU configurations; never both."""

    gpu_pools: tuple[str, ...] = ()
    cpu: tuple[CpuConfig, ...] = ()

    @property
    def is_cpu(self) -> bool:
        return bool(self.cpu)


def gpu_pools_for_memory(memory_gb: int) -> tuple[str, ...]:
    """The pools of the cheapest class with `memory_gb`, then the dearer classes as fallbacks.

    Cheapest by the flex price per second in data/costs.toml (the cost calculator's prices; today
    the smallest class is also the cheapest). A worker waits in the queue when its first choice
    has no capacity, so the fallbacks trade a higher price per second for getting a GPU at all.
    """
    fitting = sorted((gpu_class for gpu_class in GPU_CLASSES if gpu_class.memory_gb >= memory_gb), key=_price_order)
    if not fitting:
        raise ValueError(f"no RunPod GPU pool has {memory_gb} GB of memory")
    pools = [pool for gpu_class in fitting for pool in gpu_class.pools]
    return tuple(pools[:MAX_GPU_PRIORITIES])


def _price_order(gpu_class: GpuClass) -> tuple[float, int]:
    """A class's cheapest flex price per second, then its memory (without a readable price file: memory alone)."""
    from scripts.cost import DataError, flex_prices  # it imports this module: read when needed

    try:
        prices = flex_prices()
    except DataError:
        prices = {}
    return min(prices.get(pool, math.inf) for pool in gpu_class.pools), gpu_class.memory_gb


def compute_for(backend: str, memory_mode: str | None) -> Compute:
    """The default compute of a backend, as its declaration gives it (a GPU backend's for `memory_mode`,
    None: its default mode). Raises ValueError naming the fix."""
    try:
        need = declaration_of(backend).deploy.compute
    except ValueError:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}") from None
    if isinstance(need, CpuNeed):
        return Compute(cpu=tuple(CpuConfig(flavor, need.vcpus) for flavor in need.flavors))
    mode = memory_mode or need.default_memory_mode
    if mode not in need.memory_gb:
        raise ValueError(f"unknown memory mode {mode!r} for {backend}; choose one of {', '.join(need.memory_gb)}")
    return Compute(gpu_pools=gpu_pools_for_memory(need.memory_gb[mode]))


def compute_devices(compute: Compute) -> tuple[str, ...]:
    """What a worker of this compute runs on, as data/costs.toml names it: the GPU families of each
    pool (a pool the price file does not place is named as such: nothing was measured on it), or
    "cpu"."""
    if compute.is_cpu:
        return ("cpu",)
    from scripts.cost import DataError, load_costs  # it imports this module: read when needed

    try:
        prices = load_costs().prices
    except DataError:
        prices = ()
    devices = []
    for pool in compute.gpu_pools:
        cards = [card for price in prices if price.pool == pool for card in price.cards]
        devices += cards or [f"pool {pool}"]
    return tuple(dict.fromkeys(devices))


def planned_execution_timeout(backend: str, compute: Compute, mode: str, speech_seconds: float) -> int:
    """The execution timeout a job of `speech_seconds` in `mode`, at the mode's default size, needs
    on the slowest device of `compute` (model/speed.py), within RunPod's limits."""
    entry = declaration_of(backend)
    seconds = execution_timeout(entry, mode, entry.default_max_area(mode), speech_seconds, compute_devices(compute))
    return max(MIN_EXECUTION_TIMEOUT_SECONDS, min(seconds, MAX_EXECUTION_TIMEOUT_SECONDS))


def parse_cpu_configs(text: str) -> tuple[CpuConfig, ...]:
    """`cpu5c:4,cpu3c:8` → CPU configurations, in priority order."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        flavor, sep, count = item.partition(":")
        if not sep or not flavor or not count.isdigit():
            raise ValueError(f"CPU configuration {item!r} is not FLAVOR:VCPUS, e.g. cpu5c:4")
        vcpus = int(count)
        # RunPod's schema: at least 2 vCPUs and a power of two.
        if vcpus < 2 or vcpus & (vcpus - 1):
            raise ValueError(f"CPU configuration {item!r}: vCPUs must be a power of two, at least 2")
        configs.append(CpuConfig(flavor, vcpus))
    if not configs:
        raise ValueError("no CPU configuration given")
    return tuple(configs)


def parse_gpu_pools(text: str) -> tuple[str, ...]:
    """`ADA_24,AMPERE_24` → pools in priority order.

    A pool this table does not know is accepted (RunPod adds pools); the endpoint tool checks
    every pool against RunPod's catalog instead, and warns when it cannot reach it.
    """
    pools = parse_list(text)
    if not pools:
        raise ValueError("--gpu-pools names no GPU pool; give pool ids such as ADA_80_PRO,AMPERE_80")
    if len(set(pools)) != len(pools):
        raise ValueError(f"--gpu-pools names a pool twice: {text}")
    return pools


def parse_list(text: str) -> tuple[str, ...]:
    """`a, b,,c` → ("a", "b", "c")."""
    return tuple(filter(None, (part.strip() for part in text.split(","))))
