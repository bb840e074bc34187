"""The always-on server's finished videos: each at an unguessable id until its retention ends.

The id is the only thing that grants access to a video (like a presigned URL), so it is made by
`secrets` and never logged. Files live in one folder of their own, removed when the server stops.
A video being sent when its retention ends is removed once it has been sent.
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

from handler.scratch import DOWNLOADS_PREFIX, hold
from model.utc import utc_now, utc_text

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Entry:
    path: Path
    expires_at: float
    sending: int = 0


class DownloadStore:
    def __init__(self, retention_seconds: int, parent: Path | None = None) -> None:
        self.retention_seconds = retention_seconds
        self.folder = Path(tempfile.mkdtemp(prefix=DOWNLOADS_PREFIX, dir=parent))
        # held until close(): a server killed with its videos leaves a folder the next start removes
        self._held = contextlib.ExitStack()
        self._held.enter_context(hold(self.folder))
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(24)

    def path_for(self, download_id: str) -> Path:
        """Where a job puts the video it makes for `download_id`."""
        return self.folder / f"{download_id}.mp4"

    def publish(self, download_id: str) -> str:
        """The video for `download_id` is complete: serve it from now on; returns when it expires (UTC, ISO 8601)."""
        with self._lock:
            self._entries[download_id] = _Entry(self.path_for(download_id), time.monotonic() + self.retention_seconds)
        return utc_text(utc_now() + datetime.timedelta(seconds=self.retention_seconds))

    def discard(self, download_id: str) -> None:
        """A job that failed may have left part of a file."""
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
        self._held.close()
        shutil.rmtree(self.folder, ignore_errors=True)
