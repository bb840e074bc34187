"""The job's scratch folders: made under one prefix, held with a lock while in use, and the ones
a killed worker left behind removed when the next worker starts."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

JOB_PREFIX = "talking-head-job-"
DOWNLOADS_PREFIX = "talking-head-downloads-"
PREFIXES = (JOB_PREFIX, DOWNLOADS_PREFIX)
# Held (flock) by the process using the folder for as long as it does; the kernel lets go of it
# when that process dies, however it dies, so a lock that can be taken marks a folder left behind.
LOCK_NAME = ".in-use"
# A folder younger than this may belong to a process between making it and locking it.
MIN_AGE_SECONDS = 60.0


@contextlib.contextmanager
def scratch_folder(prefix: str = JOB_PREFIX, parent: Path | None = None) -> Iterator[Path]:
    """A new folder under `prefix`, locked while the block runs and removed after it."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        with hold(folder):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
