"""The always-on server's finished videos: each at an unguessable id until its retention ends.

The id is the only thing that grants access to a video (like a presigned URL), so it is made by
`secrets` and never logged. Files live in one folder of their own, removed when the server stops.
A video being sent when its retention ends is removed once it has been sent.

All of them together stay under SERVER_DOWNLOAD_MAX_BYTES: a job's video enters the folder through
`DownloadSlot.keep`, which first makes room by removing the oldest videos (their download_url then
answers 404 as after their retention); a video larger than the whole cap fails its job
OUTPUT_TOO_LARGE, naming the setting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path

from handler.errors import ErrorCode, JobError
from handler.scratch import DOWNLOADS_PREFIX, hold
from model.utc import utc_now, utc_text

log = logging.getLogger(__name__)

MAX_BYTES_ENV = "SERVER_DOWNLOAD_MAX_BYTES"


@dataclasses.dataclass
class _Entry:
    path: Path
    expires_at: float
    size: int = 0
    sending: int = 0


class DownloadStore:
    def __init__(self, retention_seconds: int, max_bytes: int, parent: Path | None = None) -> None:
        self.retention_seconds = retention_seconds
        #: SERVER_DOWNLOAD_MAX_BYTES
        self.max_bytes = max_bytes
        self.folder = Path(tempfile.mkdtemp(prefix=DOWNLOADS_PREFIX, dir=parent))
        # held until close(): a server killed with its videos leaves a folder the next start removes
        self._held = contextlib.ExitStack()
        self._held.enter_context(hold(self.folder))
        self._entries: dict[str, _Entry] = {}
        #: bytes of videos admitted (`DownloadSlot.keep`) and not yet published or discarded
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(24)

    def slot(self, download_id: str) -> DownloadSlot:
        """Where a job puts the video it makes for `download_id`."""
        return DownloadSlot(self, download_id)

    def path_for(self, download_id: str) -> Path:
        """Where a job puts the video it makes for `download_id`."""
        return self.folder / f"{download_id}.mp4"

    def admit(self, download_id: str, size: int) -> None:
        """Room for a video of `size` bytes: the oldest videos are removed until all fit under
        `max_bytes`. Raises JobError(OUTPUT_TOO_LARGE) for a video larger than the cap alone."""
        if size > self.max_bytes:
            raise JobError(ErrorCode.OUTPUT_TOO_LARGE, (
                f"the video is {size} bytes, more than this server keeps for downloads "
                f"({MAX_BYTES_ENV}={self.max_bytes}); send shorter speech or a smaller resolution, or raise "
                f"{MAX_BYTES_ENV}."))
        now = time.monotonic()
        with self._lock:
            held = sum(entry.size for entry in self._entries.values() if entry.expires_at > now)
            held += sum(self._pending.values())
            removed: list[Path] = []
            for key, entry in sorted(self._entries.items(), key=lambda item: item[1].expires_at):
                if held + size <= self.max_bytes:
                    break
                if entry.expires_at <= now:
                    continue  # expired already: not counted, removed by the sweep
                held -= entry.size
                if entry.sending:
                    entry.expires_at = now  # no one else gets it; removed once it has been sent
                else:
                    removed.append(self._entries.pop(key).path)
            self._pending[download_id] = size
        for path in removed:
            path.unlink(missing_ok=True)
        if removed:
            log.info("%d older video(s) removed to keep downloads under %s=%d", len(removed), MAX_BYTES_ENV,
                     self.max_bytes)

    def publish(self, download_id: str) -> str:
        """The video for `download_id` is complete: serve it from now on; returns when it expires (UTC, ISO 8601)."""
        path = self.path_for(download_id)
        with self._lock:
            size = self._pending.pop(download_id, None)
            if size is None:
                size = path.stat().st_size if path.exists() else 0
            self._entries[download_id] = _Entry(path, time.monotonic() + self.retention_seconds, size)
        return utc_text(utc_now() + datetime.timedelta(seconds=self.retention_seconds))

    def discard(self, download_id: str) -> None:
        """A job that failed may have left part of a file."""
        with self._lock:
            self._pending.pop(download_id, None)
        self.path_for(download_id).unlink(missing_ok=True)

    def checkout(self, download_id: str) -> Path | None:
        """The file to send, kept until `release`; None when there is no such video or it expired."""
        with self._lock:
            entry = self._entries.get(download_id)
            if entry is None or entry.expires_at <= time.monotonic():
                return None
            entry.sending += 1
            return entry.path

    def release(self, download_id: str) -> None:
        with self._lock:
            entry = self._entries.get(download_id)
            if entry is not None:
                entry.sending -= 1
        self.sweep()

    def sweep(self) -> int:
        """Remove the videos whose retention has ended (and are not being sent); returns how many."""
        now = time.monotonic()
        with self._lock:
            expired = [key for key, entry in self._entries.items() if entry.expires_at <= now and not entry.sending]
            paths = [self._entries.pop(key).path for key in expired]
        for path in paths:
            path.unlink(missing_ok=True)
        if paths:
            log.info("%d video(s) past their retention (%d s) removed", len(paths), self.retention_seconds)
        return len(paths)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._pending.clear()
        self._held.close()
        shutil.rmtree(self.folder, ignore_errors=True)



@dataclasses.dataclass(frozen=True)
class DownloadSlot:
    """Where one job's finished video goes in a store."""

    store: DownloadStore
    download_id: str

    def keep(self, video: Path) -> None:
        """Move the video in, once the store has made room for it (DownloadStore.admit)."""
        self.store.admit(self.download_id, video.stat().st_size)
        shutil.move(video, self.store.path_for(self.download_id))
