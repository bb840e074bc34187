"""Media bombs against the speech decoder: peak memory, time and disk of each, printed.

    python scripts/benchmark_hostile.py

Builds small files that decode to a lot of PCM (the issue 22 cases: 8 channels at 192 kHz for
300 s in a FLAC of a few MB; 16 channels in a WavPack), and one surround file just inside the
bounds, then decodes each with handler.media.decode_audio in a fresh Python process of its own
and prints that process's peak RSS, ffmpeg's (its children's), the seconds to the answer, the
answer, and the job folder's largest size. Figures, not assertions: tests/test_media.py holds the
bounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio_ffmpeg

ROOT = Path(__file__).resolve().parent.parent

CASES = (
    # name, seconds, rate, channels, codec arguments, MAX_AUDIO_SECONDS
    ("flac-8ch-192k-300s", 300, 192_000, 8, ("-c:a", "flac"), 300.0),
    ("wavpack-16ch-48k-10s", 10, 48_000, 16, ("-c:a", "wavpack", "-sample_fmt", "s16p"), 300.0),
    ("flac-8ch-192k-15s (inside the bounds)", 15, 192_000, 8, ("-c:a", "flac"), 300.0),
    ("wav-mono-16k-300s (the longest plain speech)", 300, 16_000, 1, ("-c:a", "pcm_s16le"), 300.0),
)

CHILD = """
import json, resource, sys, tempfile, time
from pathlib import Path
from handler.errors import JobError
from handler.media import decode_audio
source, max_seconds = Path(sys.argv[1]), float(sys.argv[2])
data = source.read_bytes()
started = time.monotonic()
with tempfile.TemporaryDirectory() as workdir:
    try:
        audio = decode_audio(data, "audio_file", Path(workdir), max_seconds)
        answer = f"decoded {audio.duration_seconds:.1f} s"
    except JobError as error:
        answer = str(error)
    disk = sum(path.stat().st_size for path in Path(workdir).iterdir())
seconds = time.monotonic() - started
print(json.dumps({"answer": answer, "seconds": seconds, "disk_bytes": disk,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "ffmpeg_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _silence(path: Path, seconds: int, rate: int, channels: int, codec: tuple[str, ...]) -> None:
    pan = f"pan={channels}c|" + "|".join(f"c{index}=c0" for index in range(channels))
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"anullsrc=r={rate}:cl=mono", "-t", str(seconds), "-af", pan, *codec, str(path)],
                   check=True, timeout=600)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        for name, seconds, rate, channels, codec, max_seconds in CASES:
            suffix = {"flac": ".flac", "wavpack": ".wv", "pcm_s16le": ".wav"}[codec[1]]
            source = Path(folder) / f"bomb{suffix}"
            _silence(source, seconds, rate, channels, codec)
            decoded_mb = seconds * rate * channels * 4 / 1e6
            run = subprocess.run([sys.executable, "-c", CHILD, str(source), str(max_seconds)], cwd=ROOT,
                                 capture_output=True, text=True, timeout=900, check=True)
            figures = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{name}: file {source.stat().st_size / 1e6:.2f} MB, {decoded_mb:.0f} MB as float32 PCM")
            print(f"  answer: {figures['answer'][:150]}")
            print(f"  {figures['seconds']:.2f} s, worker peak RSS {figures['peak_rss_mb']:.0f} MB, "
                  f"ffmpeg peak RSS {figures['ffmpeg_peak_rss_mb']:.0f} MB, "
                  f"job folder {figures['disk_bytes'] / 1e6:.1f} MB")
            source.unlink()


if __name__ == "__main__":
    main()
