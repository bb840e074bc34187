"""Speed and memory of a live session's generator on ONE CPU core, at the live sizes.

Usage: python scripts/benchmark_live.py [--seconds 60] [--backend NAME] [--session SECONDS]
(--backend: default the first backend whose declaration can go live)
Speech (assets/speech.wav, looped) is pushed in 20 ms pieces as a session would, keeping the
look-ahead queued, and a frame is taken every 40 ms of speech, as fast as the core renders them.
Prints per size: the time `next_frame` takes (wall clock: mean, p99, max; and CPU time, which a busy
machine's other work does not inflate), the sessions one core holds at the video's rate (from the
mean CPU time, and from its p99 for headroom), the generator's own latency (its look-ahead plus a
p99 frame's wall-clock rendering), and the resident memory's growth over the second half
of the session (flat: nothing grows with the session's length). With the `live` extra installed it
also encodes every frame as the WebRTC door sends it (aiortc's VP8) and prints the sessions per core
with that encoding, the figure a worker's session count rests on.

--session SECONDS also runs a whole live session per size (handler/live_session.py, in this process,
paced at the video's rate, speech pushed in real time in 20 ms pieces at 48 kHz) and prints its
latency from a speech sample entering the session to the frame that shows it leaving it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fractions
import os
import resource
import time
from pathlib import Path

# one core: set before numpy / OpenCV load their thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import cv2  # noqa: E402 - after the one-thread variables
import numpy as np  # noqa: E402 - after the one-thread variables
import soundfile  # noqa: E402 - after the one-thread variables

from model.base import SPEECH_SAMPLE_RATE, GenerationOptions  # noqa: E402 - after the one-thread variables
from model.registry import BACKENDS, declaration_of  # noqa: E402 - after the one-thread variables

ROOT = Path(__file__).resolve().parent.parent
PIECE_SECONDS = 0.02
# the live sizes: a square close-up and the contract's default landscape area
SIZES = ((512, 512), (832, 480))


def resident_mib() -> float:
    """This process's resident memory now (Linux), MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def portrait_at(width: int, height: int) -> np.ndarray:
    """The sample portrait on a canvas of the size's shape (its edges stretched, so no face is added)."""
    image = cv2.cvtColor(cv2.imread(str(ROOT / "assets" / "portrait.jpg")), cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    wide = round(h * width / height)
    tall = round(w * height / width)
    if wide > w:
        side = (wide - w) // 2
        return cv2.copyMakeBorder(image, 0, 0, side, wide - w - side, cv2.BORDER_REPLICATE)
    top = (tall - h) // 2
    return cv2.copyMakeBorder(image, top, tall - h - top, 0, 0, cv2.BORDER_REPLICATE)


def looped_speech(seconds: float) -> np.ndarray:
    samples, _ = soundfile.read(ROOT / "assets" / "speech.wav", dtype="float32")
    total = int(seconds * SPEECH_SAMPLE_RATE)
    return np.tile(samples, int(np.ceil(total / len(samples))))[:total]


def vp8_encoder():
    """aiortc's VP8 encoder, or None without the `live` extra."""
    try:
        from aiortc.codecs.vpx import Vp8Encoder
    except ImportError:
        return None
    return Vp8Encoder()


def encode_seconds(encoder, image: np.ndarray, index: int, fps: float) -> float:
    import av

    started = time.process_time()  # all threads: libvpx may use several
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    frame.time_base = fractions.Fraction(1, 90_000)
    frame.pts = round(index * 90_000 / fps)
    encoder.encode(frame)
    return time.process_time() - started


def measure(backend, width: int, height: int, speech: np.ndarray) -> str:
    portrait = backend.prepare_portrait(portrait_at(width, height), width * height)
    generator = backend.open_live(portrait, GenerationOptions(seed=0))
    piece = round(PIECE_SECONDS * SPEECH_SAMPLE_RATE)
    keep_queued = generator.samples_per_frame + round(generator.look_ahead_seconds * SPEECH_SAMPLE_RATE)
    frames = len(speech) // generator.samples_per_frame
    times = np.empty(frames)
    cpu = np.empty(frames)
    encoder = vp8_encoder()
    encoding = np.zeros(frames)
    pushed, halfway_mib = 0, 0.0
    for i in range(frames):
        while pushed < len(speech) and generator.queued_seconds * SPEECH_SAMPLE_RATE < keep_queued:
            generator.push_speech(speech[pushed : pushed + piece])
            pushed += piece
        started, started_cpu = time.perf_counter(), time.thread_time()
        frame = generator.next_frame()
        times[i] = time.perf_counter() - started
        cpu[i] = time.thread_time() - started_cpu
        if encoder is not None:
            encoding[i] = encode_seconds(encoder, frame.image, i, generator.fps)
        if i == frames // 2:
            halfway_mib = resident_mib()
    generator.close()
    mean, p99 = times.mean(), np.percentile(times, 99)
    cpu_mean, cpu_p99 = cpu.mean(), np.percentile(cpu, 99)
    frame_seconds = 1.0 / generator.fps
    with_encoding = (
        "" if encoder is None else
        f"\n  with VP8 encoding (CPU) {(cpu + encoding).mean() * 1e3:.2f} ms a frame: "
        f"{frame_seconds / (cpu + encoding).mean():.1f} sessions per core (mean), "
        f"{frame_seconds / np.percentile(cpu + encoding, 99):.1f} (p99)"
    )
    return (
        f"{portrait.width}x{portrait.height}: {frames} frames\n"
        f"  next_frame wall mean {mean * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms, max {times.max() * 1e3:.2f} ms; "
        f"CPU mean {cpu_mean * 1e3:.2f} ms, p99 {cpu_p99 * 1e3:.2f} ms\n"
        f"  sessions per core at {generator.fps:g} fps: {frame_seconds / cpu_mean:.1f} (mean), "
        f"{frame_seconds / cpu_p99:.1f} (p99)\n"
        f"  latency: look-ahead {generator.look_ahead_seconds * 1e3:.0f} ms + render p99 {p99 * 1e3:.1f} ms = "
        f"{(generator.look_ahead_seconds + p99) * 1e3:.0f} ms (plus the {frame_seconds * 1e3:.0f} ms a frame's "
        f"own speech takes to arrive)\n"
        f"  resident memory growth over the second half: {resident_mib() - halfway_mib:+.1f} MiB"
        f"{with_encoding}"
    )


async def session_latency(backend_name: str, width: int, height: int, seconds: float) -> str:
    """A whole session's figures (handler/live_session.py's own measure), for the portrait at this size."""
    from handler.live_audio import StreamingResampler
    from handler.live_session import OUTPUT_SAMPLE_RATE, LiveSessions, measure_latency
    from handler.startup import start_worker

    worker = start_worker({**os.environ, "MODEL_BACKEND": backend_name})
    sessions = LiveSessions(worker, worker.settings)
    _, png = cv2.imencode(".png", cv2.cvtColor(portrait_at(width, height), cv2.COLOR_RGB2BGR))
    session = await sessions.open({"image_file": base64.b64encode(png.tobytes()).decode(),
                                   "resolution": f"{width}*{height}"})
    speech = StreamingResampler(SPEECH_SAMPLE_RATE, OUTPUT_SAMPLE_RATE).process(looped_speech(seconds))
    try:
        figures = await measure_latency(session, speech)
    finally:
        await session.end("the benchmark is over")
    return (
        f"{session.width}x{session.height} session: {figures['fps']:.2f} frames/s paced; speech in -> its frame out: "
        f"median {figures['median_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms, max {figures['max_ms']:.0f} ms "
        f"over {figures['speech_frames']:.0f} speaking frames"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="session length per size (speech looped)")
    live = [entry.name for entry in BACKENDS.values() if entry.live.can_go_live]
    parser.add_argument("--backend", default=live[0] if live else None, help="a backend whose declaration can go live")
    parser.add_argument("--session", type=float, default=0.0, metavar="SECONDS",
                        help="also run a whole live session of this many seconds per size (0: none)")
    args = parser.parse_args()
    declaration = declaration_of(args.backend)
    if not declaration.live.can_go_live:
        raise SystemExit(f"{args.backend} cannot go live: {declaration.live.why_not}")
    backend = declaration.load_class().load(Path(os.environ.get("MODEL_DIR", "/models")), {})
    speech = looped_speech(args.seconds)
    cv2.setNumThreads(1)
    for width, height in SIZES:
        print(measure(backend, width, height, speech), flush=True)
    if args.session > 0:
        for width, height in SIZES:
            print(asyncio.run(session_latency(args.backend, width, height, args.session)), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory {peak:.0f} MiB; declared: {declaration.live.max_sessions} sessions per worker "
          f"on {getattr(declaration.deploy.compute, 'vcpus', '?')} vCPUs")


if __name__ == "__main__":
    main()
