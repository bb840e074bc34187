"""Which RunPod compute a backend needs: GPU pools, smallest class that fits first, or CPU flavors.

Facts from the runpod/docs repository: the pool ids and the cards in each come from
`references/gpu-types.mdx` ("GPU pools"); "up to three GPU types in priority order" from
`serverless/endpoints/endpoint-configurations.mdx`; the CPU flavor ids and `vcpuCount` from
`api-reference-v2/openapi.json` (`CreateCpuConfig`).
"""

from __future__ import annotations

import dataclasses
import math

from model.registry import BACKENDS as REGISTRY

BACKENDS = tuple(sorted(REGISTRY, key=lambda name: not REGISTRY[name].needs_gpu))  # the GPU one first


@dataclasses.dataclass(frozen=True)
class GpuClass:
    memory_gb: int
    # Within a class the newer generation first: faster for the same memory.
    pools: tuple[str, ...]


# Smallest first.
GPU_CLASSES = (
    GpuClass(24, ("ADA_24", "AMPERE_24")),  # RTX 4090 | L4, A5000, RTX 3090
    GpuClass(48, ("ADA_48_PRO", "AMPERE_48")),  # L40, L40S, RTX 6000 Ada | A6000, A40
    GpuClass(80, ("ADA_80_PRO", "AMPERE_80")),  # H100 | A100 80GB
    GpuClass(141, ("HOPPER_141",)),  # H200
)
KNOWN_GPU_POOLS = tuple(pool for gpu_class in GPU_CLASSES for pool in gpu_class.pools)

# GPU memory a Wan2.2-S2V-14B worker needs in each WAN_MEMORY_MODE: `full` keeps the bf16
# transformer (~32 GB) and text encoder (~11 GB) on the GPU with room for activations; `fp8`
# stores the transformer's weights in fp8 (computes in bf16, so Ampere works too); `offload`
# keeps only the running blocks on the GPU.
# The fast mode (job field `mode`, endpoint default DEFAULT_MODE) runs on the same GPUs as the
# quality mode; these sizes are the quality mode's. Its extra memory, ~42 GB of attention caches
# at 704x384, fits an 80 GB card in fp8 or a 141 GB card in any mode, not a 48 GB card: an
# estimate, not yet measured on a GPU. For a fast-mode endpoint pass --gpu-pools (e.g.
# ADA_80_PRO,AMPERE_80,HOPPER_141) with --memory-mode fp8.
WAN_MEMORY_MODE_GPU_GB = {"full": 80, "fp8": 48, "offload": 24}
# fp8 by default: 48 GB cards cost about half as much per second as 80 GB ones (the docs'
# snippets/serverless-gpu-pricing-table.mdx) and are easier to get, and fp8 weight storage costs
# little quality; `full` is for the last bit of quality.
DEFAULT_WAN_MEMORY_MODE = "fp8"

MAX_GPU_PRIORITIES = 3

# The lite backend is CPU-only: compute-optimised flavors, the newer generation first.
LITE_CPU_VCPUS = 4
LITE_CPU_FLAVORS = ("cpu5c", "cpu3c")


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
    """The default compute for a backend (and, for wan-s2v, its memory mode)."""
    if backend == "lite":
        return Compute(cpu=tuple(CpuConfig(flavor, LITE_CPU_VCPUS) for flavor in LITE_CPU_FLAVORS))
    if backend == "wan-s2v":
        mode = memory_mode or DEFAULT_WAN_MEMORY_MODE
        if mode not in WAN_MEMORY_MODE_GPU_GB:
            raise ValueError(
                f"unknown memory mode {mode!r}; choose one of {', '.join(WAN_MEMORY_MODE_GPU_GB)}"
            )
        return Compute(gpu_pools=gpu_pools_for_memory(WAN_MEMORY_MODE_GPU_GB[mode]))
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


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
