"""Preset avatars: `PRESET_AVATARS_DIR/<avatar_id>/<one image>`, prepared once at worker start."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from handler.errors import ErrorCode, JobError, from_model_error
from handler.media import decode_image
from model.base import NoFaceError, PreparedPortrait, TalkingHeadBackend

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


class PresetAvatars:
    """Decoded preset portraits, and their prepared form per resolution budget."""

    def __init__(self, directory: Path | None, backend: TalkingHeadBackend, max_image_pixels: int) -> None:
        self._backend = backend
        self._images = {}
        self._prepared: dict[tuple[str, int], PreparedPortrait] = {}
        self._lock = threading.Lock()
        if directory is not None:
            self._images = _load_images(directory, max_image_pixels)

    @property
    def ids(self) -> list[str]:
        return sorted(self._images)

    def warm(self, max_area: int) -> None:
        """Prepare every preset for the default resolution; a preset with no face is dropped."""
        for avatar_id in self.ids:
            try:
                self.prepared(avatar_id, max_area)
            except JobError as error:
                log.warning("preset %s is unusable and was dropped: %s", avatar_id, error)
                del self._images[avatar_id]

    def prepared(self, avatar_id: str, max_area: int) -> PreparedPortrait:
        key = (avatar_id, max_area)
        with self._lock:
            cached = self._prepared.get(key)
        if cached is not None:
            return cached
        image = self._images.get(avatar_id)
        if image is None:
            # the other presets are other customers' faces: never listed to a client
            raise JobError(
                ErrorCode.INVALID_INPUT,
                f"avatar_id {avatar_id!r} is not a preset on this endpoint; send an avatar_id its operator "
                "configured (PRESET_AVATARS_DIR), or image_file instead.",
            )
        try:
            prepared = self._backend.prepare_portrait(image, max_area)
        except NoFaceError as error:
            raise from_model_error(error, f"preset avatar {avatar_id!r} has no usable face") from None
        with self._lock:
            self._prepared[key] = prepared
        log.info("preset %s prepared for a %d pixel budget (%dx%d)",
                 avatar_id, max_area, prepared.width, prepared.height)
        return prepared


def _load_images(directory: Path, max_image_pixels: int) -> dict:
    if not directory.is_dir():
        log.warning("PRESET_AVATARS_DIR %s is not a directory; no presets", directory)
        return {}
    images = {}
    for folder in sorted(path for path in directory.iterdir() if path.is_dir()):
        candidates = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not candidates:
            log.warning("preset %s has no jpeg/png/webp image; skipped", folder.name)
            continue
        try:
            images[folder.name] = decode_image(candidates[0].read_bytes(), f"preset {folder.name}", max_image_pixels)
        except JobError as error:
            log.warning("preset %s skipped: %s", folder.name, error)
    return images
