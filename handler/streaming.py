"""Where a `stream` job's segments go while it renders (docs/CONTRACT.md, "Streaming").

Two ways out, either or both: items for RunPod's `/stream/{id}` (an endpoint with
STREAM_RESULTS=1, handler/runpod_handler.py), and the bucket, where the segments and an HLS playlist that
lists their presigned URLs are uploaded as they are made, so that any HLS player plays the video
while the job still runs.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from handler import delivery
from handler.bucket import BucketSettings
from handler.cancel import current_control
from handler.errors import ErrorCode, JobError
from handler.segments import CONTENT_TYPE, PLAYLIST_NAME, Segment, SegmentPlan, remux_to_mp4
from model.utc import utc_now

log = logging.getLogger(__name__)

# RunPod refuses a streamed item over 1 MB; base64 makes a part 4/3 larger (933 kB), which leaves
# room for the item's other fields.
SEGMENT_PART_BYTES = 700_000
PLAYLIST_CONTENT_TYPE = "application/vnd.apple.mpegurl"
# Each upload has its own deadline (UPLOAD_TIMEOUT_SECONDS); this only bounds the wait for the
# queue of them at the end of the job.
UPLOADS_DONE_GRACE_SECONDS = 30.0

StreamItem = dict[str, Any]


def segment_items(segment: Segment, data: bytes) -> list[StreamItem]:
    """The /stream items of one segment: one, or several parts each under RunPod's item limit."""
    parts = max(1, math.ceil(len(data) / SEGMENT_PART_BYTES))
    return [
        {"segment": {
            "index": segment.index,
            "part": part,
            "parts": parts,
            "start_seconds": segment.start_seconds,
            "end_seconds": segment.end_seconds,
            "content_type": CONTENT_TYPE,
            "data_base64": base64.b64encode(data[part * SEGMENT_PART_BYTES:(part + 1) * SEGMENT_PART_BYTES]).decode(),
        }}
        for part in range(parts)
    ]


class BucketPlaylist:
    """Segments uploaded in order as they are made, each followed by the playlist that lists it.

    The playlist is an HLS EVENT playlist, re-uploaded after every segment and closed with
    ENDLIST at the end, whose entries are the segments' presigned URLs (a presigned URL signs one
    key, so relative names would not load). Uploads run on one thread beside the job, so the
    generation never waits for the bucket; a failed upload fails the job (UPLOAD_FAILED) at the
    next segment or at the end.

    Presigned URLs are valid URL_EXPIRY_SECONDS from when they are signed, and a job may render
    longer than that: the closed playlist lists its segments signed anew, and `finish` signs the
    playlist's own URL (`url`, `expires_at`) again, so the result's link is valid that long from the
    job's end. Uploads stop at once when the job is stopped (its JobControl, taken here on the job's
    thread).
    """

    def __init__(
        self, bucket: BucketSettings, job_id: str, plan: SegmentPlan, fps: float, expiry_seconds: int,
        timeout_seconds: float, allow_private: bool,
    ) -> None:
        now = utc_now()
        self._prefix = delivery.new_key_prefix(job_id, now)
        self._bucket = bucket
        self._expiry_seconds = expiry_seconds
        self._timeout_seconds = timeout_seconds
        self._allow_private = allow_private
        self._target_seconds = math.ceil(max(plan.first_cut, plan.step) / fps)
        self._control = current_control()
        #: each segment's (duration, key, presigned URL), in order
        self._entries: list[tuple[float, str, str]] = []
        self._uploads: list[concurrent.futures.Future[None]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="segment-upload")
        playlist_key = f"{self._prefix}/index.m3u8"
        #: the playlist's presigned GET URL (never logged)
        self.url = delivery.presign_url(bucket, playlist_key, expiry_seconds)
        self.expires_at = delivery.expiry_time(now, expiry_seconds)
        self._playlist_key = playlist_key
        # Before the URL is reported, so that it loads at once (an empty playlist, to be polled).
        self._put_playlist(ended=False)

    def add(self, segment: Segment, data: bytes) -> None:
        self._raise_failed_upload()
        self._uploads.append(self._executor.submit(self._upload_segment, segment, data))

    def finish(self) -> None:
        """Close the playlist once every segment is up; raises UPLOAD_FAILED if one is not."""
        self._uploads.append(self._executor.submit(self._put_playlist, True))
        wait = self._timeout_seconds * len(self._uploads) + UPLOADS_DONE_GRACE_SECONDS
        done, pending = concurrent.futures.wait(self._uploads, timeout=wait)
        if pending:
            raise JobError(ErrorCode.UPLOAD_FAILED, "the stream's segments were still uploading at the deadline.")
        self._raise_failed_upload()
        now = utc_now()
        self.url = delivery.presign_url(self._bucket, self._playlist_key, self._expiry_seconds)
        self.expires_at = delivery.expiry_time(now, self._expiry_seconds)

    def close(self) -> None:
        """Drop uploads not yet started (the job failed or stopped); the running one ends by its deadline."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _raise_failed_upload(self) -> None:
        for upload in self._uploads:
            if upload.done() and not upload.cancelled() and upload.exception() is not None:
                raise upload.exception()  # type: ignore[misc]  # checked not None just above

    def _upload_segment(self, segment: Segment, data: bytes) -> None:
        key = f"{self._prefix}/segment-{segment.index:05d}.ts"
        self._put(key, data, CONTENT_TYPE)
        url = delivery.presign_url(self._bucket, key, self._expiry_seconds)
        self._entries.append((segment.end_seconds - segment.start_seconds, key, url))
        self._put_playlist(ended=False)

    def _put_playlist(self, ended: bool) -> None:
        if ended:  # the playlist a player reads after the job: every link valid from now
            self._entries = [(seconds, key, delivery.presign_url(self._bucket, key, self._expiry_seconds))
                             for seconds, key, _ in self._entries]
        text = (
            "#EXTM3U\n#EXT-X-VERSION:3\n"
            f"#EXT-X-TARGETDURATION:{self._target_seconds}\n"
            "#EXT-X-PLAYLIST-TYPE:EVENT\n#EXT-X-MEDIA-SEQUENCE:0\n"
            + "".join(f"#EXTINF:{seconds:.3f},\n{url}\n" for seconds, _, url in self._entries)
            + ("#EXT-X-ENDLIST\n" if ended else "")
        )
        self._put(self._playlist_key, text.encode(), PLAYLIST_CONTENT_TYPE)

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        delivery.put_object(
            io.BytesIO(data), len(data), key, content_type, self._bucket, self._timeout_seconds, self._allow_private,
            self._control,
        )


class SegmentSinks:
    """Hands each finished segment (made in `directory`, cut by `plan`) to the job's ways out, and counts what left."""

    def __init__(
        self, directory: Path, plan: SegmentPlan, emit: Callable[[StreamItem], None] | None,
        playlist: BucketPlaylist | None,
    ) -> None:
        self.directory = directory
        #: where the segments are cut
        self.plan = plan
        self._emit = emit
        self.playlist = playlist
        self.segments = 0
        self.bytes = 0

    def __call__(self, segment: Segment) -> None:
        data = segment.path.read_bytes()
        if self.playlist is not None:
            self.playlist.add(segment, data)
        if self._emit is not None:
            items = segment_items(segment, data)
            if self.segments == 0 and self.playlist is not None:
                items[0]["playlist_url"] = self.playlist.url
            for item in items:
                self._emit(item)
        self.segments += 1
        self.bytes += len(data)

    def finish(self, mp4: Path | None) -> None:
        """Once every segment is out: the whole video as the MP4 `mp4` too (when it is delivered as
        one), and the bucket's playlist closed."""
        if mp4 is not None:
            remux_to_mp4(self.directory / PLAYLIST_NAME, mp4)
        if self.playlist is not None:
            self.playlist.finish()
