"""The job's scratch folders: made under one prefix, held with a lock while in use, and the ones
a killed worker left behind removed when the next worker starts.

A job's folder lives in the system's temporary folder (TMPDIR, else /tmp). Before a job does
anything costly, `check_free_space` makes sure its disk has room for the most the job can write
(its speech input, the muxing WAV, the MP4 and a stream's segments, from the job's own bounds) plus
SCRATCH_RESERVE_BYTES; a job that does not fit, and any job whose writes find the disk full
(ENOSPC) midway, fails TOO_LARGE naming the folder and the fix, never INTERNAL.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from handler.errors import ErrorCode, JobError

if TYPE_CHECKING:
    from handler.schema import JobRequest
    from handler.settings import WorkerSettings

log = logging.getLogger(__name__)

JOB_PREFIX = "talking-head-job-"
DOWNLOADS_PREFIX = "talking-head-downloads-"
PREFIXES = (JOB_PREFIX, DOWNLOADS_PREFIX)
# Held (flock) by the process using the folder for as long as it does; the kernel lets go of it
# when that process dies, however it dies, so a lock that can be taken marks a folder left behind.
LOCK_NAME = ".in-use"
# A folder younger than this may belong to a process between making it and locking it.
MIN_AGE_SECONDS = 60.0
# The most an MP4 (or a stream's segments) takes per second of video: 8 Mbit/s, several times what
# H.264 at the contract's quality makes of a talking head (lite at 832x480: about 40 kB/s).
OUTPUT_BYTES_PER_SECOND = 1_000_000
# The muxing copy of the speech: at most MAX_DECODED_CHANNEL_RATE 16-bit samples a second (media.py).
MUX_WAV_BYTES_PER_SECOND = 2 * 48_000 * 2


@contextlib.contextmanager
def scratch_folder(prefix: str = JOB_PREFIX, parent: Path | None = None) -> Iterator[Path]:
    """A new folder under `prefix`, locked while the block runs and removed after it. A full disk
    (ENOSPC) in the block, or no room to make the folder, raises the contract's TOO_LARGE."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise disk_full(Path(parent or tempfile.gettempdir())) from None
        raise
    try:
        with hold(folder):
            yield folder
    except Exception as error:
        if is_disk_full(error):
            raise disk_full(folder.parent) from None
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def free_bytes(folder: Path) -> int:
    """Free space an unprivileged process may use on the disk holding `folder` (statvfs f_bavail)."""
    return shutil.disk_usage(folder).free


def job_scratch_bytes(request: JobRequest, max_input_bytes: int, max_video_bytes: int = 0) -> int:
    """The most a job writes to its scratch folder: its speech input (the base64's own size, or
    MAX_INPUT_BYTES for a URL), the muxing WAV and the MP4 for the longest speech it may send, and
    as much again for a stream's segments. (The portrait is decoded in memory.)"""
    audio = request.audio
    input_bytes = len(audio.value) * 3 // 4 if audio.kind == "base64" else max_input_bytes
    seconds = request.max_duration_seconds
    output = seconds * OUTPUT_BYTES_PER_SECOND * (2 if request.stream else 1)
    return int(min(input_bytes, max_input_bytes) + seconds * MUX_WAV_BYTES_PER_SECOND + output
               + _dubbing_bytes(request, max_input_bytes, max_video_bytes))


def _dubbing_bytes(request: JobRequest, max_input_bytes: int, max_video_bytes: int) -> int:
    """What a video to dub and a second speaker add: the video file, the second speech's input and
    muxing WAV, and the 16 kHz 16-bit mix of the two (handler/speakers.py), twice the longest speech."""
    extra = 0
    if request.video is not None:
        extra += min(len(request.video.value) * 3 // 4 if request.video.kind == "base64" else max_video_bytes,
                     max_video_bytes)
    if request.audio_2 is not None:
        second = request.audio_2
        extra += min(len(second.value) * 3 // 4 if second.kind == "base64" else max_input_bytes, max_input_bytes)
        extra += int(request.max_duration_seconds * (MUX_WAV_BYTES_PER_SECOND + 2 * 2 * 16_000))
    return extra


def check_free_space(folder: Path, request: JobRequest, settings: WorkerSettings) -> None:
    """Before the job's costly work: its disk has room for what it may write, plus the reserve."""
    need = job_scratch_bytes(request, settings.max_input_bytes, settings.max_video_bytes)
    reserve = settings.scratch_reserve_bytes
    free = free_bytes(folder)
    if free >= need + reserve:
        return
    log.warning("refusing a job: %s has %d bytes free, the job may need %d plus the reserve of %d",
                folder.parent, free, need, reserve)
    raise JobError(ErrorCode.TOO_LARGE, (
        f"the worker's temporary folder {folder.parent} has {_mb(free)} free, and this job may need "
        f"{_mb(need)} there plus the SCRATCH_RESERVE_BYTES={reserve} kept free; send shorter speech (a lower "
        "max_duration_seconds) or retry later, and the operator should free space there or point TMPDIR "
        "at a larger disk."))


# How a child process (ffmpeg, writing the MP4 or the muxing WAV) reports a full disk in its log,
# which the error it causes quotes (handler/video.py's VideoEncodingError).
DISK_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def is_disk_full(error: BaseException) -> bool:
    """The error, or one it came from, is a write that found the disk full: ours (ENOSPC, EDQUOT)
    or a child process's, whose log the error quotes."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if not isinstance(seen, JobError) and any(text in str(seen) for text in DISK_FULL_TEXTS):
            return True  # (a JobError's sentence may quote what the job sent)
        seen = seen.__cause__ or seen.__context__
    return False


def disk_full(parent: Path) -> JobError:
    return JobError(ErrorCode.TOO_LARGE, (
        f"the disk of the worker's temporary folder {parent} filled up during the job (no space left on "
        "device); retry later or with shorter speech, and the operator should free space there, point "
        "TMPDIR at a larger disk or raise SCRATCH_RESERVE_BYTES."))


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.1f} MB"


@contextlib.contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Mark `folder` in use by this process until the block ends."""
    with open(folder / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remove_leftovers(parent: Path | None = None, min_age_seconds: float = MIN_AGE_SECONDS) -> list[Path]:
    """Remove the scratch folders of processes that died with them (their lock is free); a
    folder in use by a live process, this worker's or another's, is left alone."""
    parent = Path(tempfile.gettempdir()) if parent is None else parent
    removed = []
    now = time.time()
    for folder in sorted(path for prefix in PREFIXES for path in parent.glob(f"{prefix}*") if path.is_dir()):
        if now - folder.stat().st_mtime < min_age_seconds:
            continue  # perhaps made an instant ago by a process about to lock it
        try:
            with open(folder / LOCK_NAME, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live process holds it
        except OSError:
            pass  # no lock file could be made: a folder from before locks, or a broken one
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        log.info("removed %d scratch folders that stopped workers left behind", len(removed))
    return removed
