"""Where the Wan2.2-S2V-14B weights are, and fetching them once when they are nowhere.

The official checkpoint (`Wan-AI/Wan2.2-S2V-14B`, about 49 GB of what we read) is looked for, in
order, in MODEL_DIR itself, in MODEL_DIR/Wan2.2-S2V-14B (where a download lands), in RunPod's
cached-model store on the network volume, and in the copy that scripts/download_models.py bakes
into the image. Only when none is complete is it downloaded, into MODEL_DIR/Wan2.2-S2V-14B.

The Live Avatar LoRA of the fast mode (`Quark-Vision/Live-Avatar`, one file) is looked for and
fetched the same way, into MODEL_DIR/Live-Avatar; the base weights never depend on it.

Workers that start together on one network volume share MODEL_DIR, and RunPod warns that
concurrent writes to a volume can corrupt it. So both downloads run under one lock file in
MODEL_DIR (one download at a time, whoever holds it keeps it fresh; the others wait, and take over
a lock whose holder stopped refreshing it), and a download folder counts only once its
finished-marker, written last, is there: a download that was killed leaves none, and the next
start resumes it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from model.base import ModelUnavailableError

from .config import (
    LORA_FILE,
    LORA_REPO_ID,
    T5_CHECKPOINT_FILE,
    T5_TOKENIZER_DIR,
    TRANSFORMER_CONFIG_FILE,
    TRANSFORMER_INDEX_FILE,
    VAE_CHECKPOINT_FILE,
    WAV2VEC_DIR,
)

log = logging.getLogger(__name__)

REPO_ID = "Wan-AI/Wan2.2-S2V-14B"
DOWNLOAD_FOLDER_NAME = "Wan2.2-S2V-14B"
LORA_DOWNLOAD_FOLDER_NAME = "Live-Avatar"
# RunPod's "cached models" put a Hugging Face cache on the volume; snapshots are named by commit.
RUNPOD_MODEL_CACHE = Path("/runpod-volume/huggingface-cache/hub")
# Where scripts/download_models.py puts the weights and the LoRA by default, which is what the
# Dockerfile's `baked` stage runs: the same layout as a download into MODEL_DIR.
IMAGE_MODEL_DIR = Path("/models")
IMAGE_WEIGHTS_DIR = IMAGE_MODEL_DIR / DOWNLOAD_FOLDER_NAME
IMAGE_LORA_DIR = IMAGE_MODEL_DIR / LORA_DOWNLOAD_FOLDER_NAME

# One lock per models folder, for both downloads; a finished-marker in each download folder.
LOCK_FILE_NAME = ".download.lock"
FINISHED_MARKER_NAME = ".download-finished"
# The lock holder refreshes the lock file's modification time this often; a waiter that sees no
# refresh for LOCK_STALE_SECONDS of its own clock (so clocks of different machines never matter)
# takes the lock over. Eight missed refreshes: a network volume that stalls for a minute does not
# make a live download look dead, and a dead one delays the next start by two minutes at most.
LOCK_REFRESH_SECONDS = 15.0
LOCK_STALE_SECONDS = 120.0
LOCK_POLL_SECONDS = 1.0
# The longest a worker waits for another worker's download. Shorter than the start timeout the
# deploy tooling gives RunPod (scripts/endpoint_requests.py, WORKER_INIT_TIMEOUT_SECONDS), so
# that a worker says why it gave up before RunPod kills it as unhealthy.
LOCK_WAIT_SECONDS = 50 * 60
WAIT_LOG_INTERVAL_SECONDS = 30.0

# What the loader reads. The wav2vec2 folder holds the same weights up to three times
# (model.safetensors, pytorch_model.bin, flax_model.msgpack) and an n-gram language model for CTC
# decoding that we never use: gigabytes the worker would download for nothing. One weights file
# is taken, safetensors when the repository has it.
WAV2VEC_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DOWNLOAD_PATTERNS = (
    TRANSFORMER_CONFIG_FILE,
    TRANSFORMER_INDEX_FILE,
    "diffusion_pytorch_model-*.safetensors",
    VAE_CHECKPOINT_FILE,
    T5_CHECKPOINT_FILE,
    f"{T5_TOKENIZER_DIR}/*",
    f"{WAV2VEC_DIR}/*.json",
)
SKIPPED_PATTERNS = (
    f"{WAV2VEC_DIR}/language_model/*",
    "*.msgpack",
    "*.h5",
)

# Each of these must be present for a folder to count as the checkpoint; the transformer's
# shards are read from its index, and wav2vec2 needs one of WAV2VEC_WEIGHT_FILES.
REQUIRED_FILES = (
    TRANSFORMER_CONFIG_FILE,
    TRANSFORMER_INDEX_FILE,
    VAE_CHECKPOINT_FILE,
    T5_CHECKPOINT_FILE,
    f"{WAV2VEC_DIR}/config.json",
    f"{WAV2VEC_DIR}/preprocessor_config.json",
)


def download_patterns(repo_files: list[str]) -> list[str]:
    """The allow-patterns for a repository with these files: ours plus one wav2vec2 weights file."""
    available = [name for name in WAV2VEC_WEIGHT_FILES if f"{WAV2VEC_DIR}/{name}" in repo_files]
    chosen = available[0] if available else WAV2VEC_WEIGHT_FILES[0]
    return [*DOWNLOAD_PATTERNS, f"{WAV2VEC_DIR}/{chosen}"]


def missing_files(folder: Path) -> list[str]:
    """The checkpoint files absent from `folder` (empty: the folder is a complete checkpoint)."""
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any((folder / WAV2VEC_DIR / name).is_file() for name in WAV2VEC_WEIGHT_FILES):
        missing.append(f"{WAV2VEC_DIR}/{WAV2VEC_WEIGHT_FILES[0]}")
    tokenizer = folder / T5_TOKENIZER_DIR
    if not tokenizer.is_dir() or not any(tokenizer.iterdir()):
        missing.append(f"{T5_TOKENIZER_DIR}/")
    index = folder / TRANSFORMER_INDEX_FILE
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as error:
            return [*missing, f"{TRANSFORMER_INDEX_FILE} (unreadable: {error})"]
        missing += [shard for shard in shards if not (folder / shard).is_file()]
    return missing


def candidate_folders(
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_dir: Path = IMAGE_WEIGHTS_DIR,
) -> list[Path]:
    """Every place the checkpoint may be, in the order they are tried."""
    return [model_dir, model_dir / DOWNLOAD_FOLDER_NAME, *_cached_snapshots(runpod_cache, REPO_ID), image_dir]


def locate_weights(
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_dir: Path = IMAGE_WEIGHTS_DIR,
) -> Path | None:
    """The first complete checkpoint folder, or None.

    The download folder counts only with its finished-marker: its files may be another worker's
    download in progress.
    """
    download_folder = model_dir / DOWNLOAD_FOLDER_NAME
    for folder in candidate_folders(model_dir, runpod_cache, image_dir):
        if folder == download_folder:
            if is_finished(folder, missing_files):
                return folder
        elif folder.is_dir() and not missing_files(folder):
            return folder
    return None


def weights_present(model_dir: Path) -> bool:
    """Whether a complete checkpoint is already on this machine (no download needed)."""
    return locate_weights(model_dir) is not None


def ensure_weights(
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_dir: Path = IMAGE_WEIGHTS_DIR,
    endpoint: str | None = None,
    wait_seconds: float | None = None,
) -> Path:
    """The checkpoint folder, downloaded into MODEL_DIR/Wan2.2-S2V-14B first if it is nowhere.

    Raises ModelUnavailableError naming every place it looked and why the download failed.
    """
    found = locate_weights(model_dir, runpod_cache, image_dir)
    if found is not None:
        log.info("Wan2.2-S2V weights found in %s", found)
        return found
    looked = ", ".join(str(folder) for folder in candidate_folders(model_dir, runpod_cache, image_dir))
    target = model_dir / DOWNLOAD_FOLDER_NAME
    log.info("Wan2.2-S2V weights are not in %s; fetching %s into %s", looked, REPO_ID, target)
    return _fetch_or_explain(
        lambda: download_weights_into(model_dir, endpoint=endpoint, wait_seconds=wait_seconds),
        f"the Wan2.2-S2V-14B weights were not found (looked in {looked})",
        lambda reason: (
            f"downloading {REPO_ID} into {target} failed ({reason}); attach a network volume that "
            "holds them, enable RunPod's model cache for that repository, or set HF_TOKEN and check "
            "the network, free disk space and that MODEL_DIR is writable."
        ),
    )


def download_weights_into(model_dir: Path, endpoint: str | None = None, wait_seconds: float | None = None) -> Path:
    """MODEL_DIR/Wan2.2-S2V-14B, finished: downloaded (or resumed) under MODEL_DIR's lock unless it is.

    Raises LockWaitTimeout, IncompleteDownloadError, or the download's own error.
    """
    target = model_dir / DOWNLOAD_FOLDER_NAME
    return _fetch_once(
        model_dir, target, REPO_ID, lambda: download_weights(target, endpoint), missing_files, wait_seconds
    )


def download_weights(target: Path, endpoint: str | None = None) -> Path:
    """Fetch the files the loader reads into `target`, without the lock; files already there are kept.

    The token comes from HF_TOKEN (read by huggingface_hub itself), so it is never in our logs.
    """
    from huggingface_hub import HfApi

    repo_files = HfApi(endpoint=endpoint).list_repo_files(REPO_ID)
    return _download(REPO_ID, target, download_patterns(repo_files), list(SKIPPED_PATTERNS), endpoint)


def lora_candidate_files(
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_dir: Path = IMAGE_LORA_DIR,
) -> list[Path]:
    """Every place the Live Avatar LoRA may be, in the order they are tried."""
    folders = [
        model_dir, model_dir / LORA_DOWNLOAD_FOLDER_NAME, *_cached_snapshots(runpod_cache, LORA_REPO_ID), image_dir
    ]
    return [folder / LORA_FILE for folder in folders]


def missing_lora(folder: Path) -> list[str]:
    """[LORA_FILE] when `folder` lacks it, else []."""
    return [] if (folder / LORA_FILE).is_file() else [LORA_FILE]


def locate_lora(
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_dir: Path = IMAGE_LORA_DIR,
) -> Path | None:
    """The first Live Avatar LoRA file found, or None (the download folder's only when finished)."""
    download_folder = model_dir / LORA_DOWNLOAD_FOLDER_NAME
    for file in lora_candidate_files(model_dir, runpod_cache, image_dir):
        if file.parent == download_folder:
            if is_finished(download_folder, missing_lora):
                return file
        elif file.is_file():
            return file
    return None


def ensure_lora(
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_dir: Path = IMAGE_LORA_DIR,
    endpoint: str | None = None,
    wait_seconds: float | None = None,
) -> Path:
    """The Live Avatar LoRA file, downloaded into MODEL_DIR/Live-Avatar first if it is nowhere.

    Raises ModelUnavailableError naming every place it looked and why the download failed.
    """
    found = locate_lora(model_dir, runpod_cache, image_dir)
    if found is not None:
        log.info("Live Avatar LoRA found at %s", found)
        return found
    looked = ", ".join(str(file) for file in lora_candidate_files(model_dir, runpod_cache, image_dir))
    target = model_dir / LORA_DOWNLOAD_FOLDER_NAME
    log.info("the Live Avatar LoRA is not at %s; fetching %s from %s into %s", looked, LORA_FILE, LORA_REPO_ID, target)
    return _fetch_or_explain(
        lambda: download_lora_into(model_dir, endpoint=endpoint, wait_seconds=wait_seconds) / LORA_FILE,
        f"the Live Avatar LoRA of the fast mode was not found (looked at {looked})",
        lambda reason: (
            f"downloading {LORA_FILE} of {LORA_REPO_ID} into {target} failed ({reason}); attach a "
            "network volume that holds it, or set HF_TOKEN and check the network, free disk space and "
            "that MODEL_DIR is writable."
        ),
    )


def _fetch_or_explain(fetch: Callable[[], Path], not_found: str, download_failed: Callable[[str], str]) -> Path:
    """fetch(), or ModelUnavailableError: `not_found`, and why fetching did not help."""
    try:
        return fetch()
    except (LockWaitTimeout, IncompleteDownloadError) as error:
        raise ModelUnavailableError(f"{not_found} and {error}") from error
    except Exception as error:  # any failure here means the same thing to the user
        raise ModelUnavailableError(f"{not_found} and {download_failed(failure_reason(error))}") from error


def download_lora_into(model_dir: Path, endpoint: str | None = None, wait_seconds: float | None = None) -> Path:
    """MODEL_DIR/Live-Avatar, finished, under the same lock as the weights (see download_weights_into)."""
    target = model_dir / LORA_DOWNLOAD_FOLDER_NAME
    return _fetch_once(
        model_dir, target, LORA_REPO_ID, lambda: download_lora(target, endpoint), missing_lora, wait_seconds
    )


def download_lora(target: Path, endpoint: str | None = None) -> Path:
    """Fetch the Live Avatar LoRA file into `target`, without the lock; the token as for the weights."""
    return _download(LORA_REPO_ID, target, [LORA_FILE], [], endpoint)


def _download(
    repo_id: str, target: Path, allow_patterns: list[str], ignore_patterns: list[str], endpoint: str | None
) -> Path:
    from huggingface_hub import snapshot_download

    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    snapshot_download(
        repo_id,
        local_dir=target,
        allow_patterns=allow_patterns,
        ignore_patterns=ignore_patterns,
        tqdm_class=LoggedProgress,
        endpoint=endpoint,
        etag_timeout=30,
    )
    log.info("downloaded %s into %s in %.0f s", repo_id, target, time.monotonic() - started)
    return target


# --- One download per models folder ---------------------------------------------------------


class IncompleteDownloadError(Exception):
    """A download ended without every file it should have brought."""


class LockWaitTimeout(TimeoutError):
    """Another process held the download lock for longer than this one may wait."""


def is_finished(folder: Path, missing: Callable[[Path], list[str]]) -> bool:
    """Whether a download folder holds its finished-marker and nothing is missing."""
    return (folder / FINISHED_MARKER_NAME).is_file() and not missing(folder)


def _fetch_once(
    models_dir: Path,
    target: Path,
    repo_id: str,
    download: Callable[[], object],
    missing: Callable[[Path], list[str]],
    wait_seconds: float | None,
) -> Path:
    """`target` finished: downloaded under `models_dir`'s lock unless it already is."""
    if is_finished(target, missing):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with DownloadLock(models_dir / LOCK_FILE_NAME, LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds):
        if is_finished(target, missing):
            log.info("%s was fetched into %s by another process while this one waited", repo_id, target)
            return target
        (target / FINISHED_MARKER_NAME).unlink(missing_ok=True)
        _remove_partial_files(target)
        download()
        still_missing = missing(target)
        if still_missing:
            raise IncompleteDownloadError(
                f"the download of {repo_id} into {target} finished without {', '.join(still_missing)}; "
                "check that the repository still publishes them, then restart the worker (it resumes)."
            )
        _write_finished_marker(target, repo_id)
    return target


def _remove_partial_files(target: Path) -> None:
    """Partial files of a download that died (huggingface_hub restarts a file, it never continues one).

    Only called under the lock, so no live download owns them.
    """
    partial = list((target / ".cache" / "huggingface").rglob("*.incomplete")) if target.is_dir() else []
    for file in partial:
        file.unlink(missing_ok=True)
    if partial:
        log.info("removed %d partial file(s) of an interrupted download in %s", len(partial), target)


def _write_finished_marker(target: Path, repo_id: str) -> None:
    """Written last, atomically: its presence means every file before it is complete."""
    record = {"repo_id": repo_id, "finished_at": _utc_now(), "by": _holder_name()}
    temporary = target / f"{FINISHED_MARKER_NAME}.{uuid.uuid4().hex}"
    with open(temporary, "w") as file:
        json.dump(record, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target / FINISHED_MARKER_NAME)
    log.info("%s is complete in %s", repo_id, target)


class DownloadLock:
    """An exclusive lock on a models folder, across processes and machines that share it.

    A file created with O_EXCL (atomic on local disks and network filesystems, where flock across
    machines is not guaranteed), holding who took it. The holder refreshes its modification time
    every LOCK_REFRESH_SECONDS from a background thread; a waiter that sees the file unchanged for
    LOCK_STALE_SECONDS takes it over, and gives up with LockWaitTimeout after `wait_seconds`.
    """

    def __init__(self, path: Path, wait_seconds: float) -> None:
        self.path = path
        self.wait_seconds = wait_seconds
        self._content = json.dumps({"holder": _holder_name(), "since": _utc_now(), "token": uuid.uuid4().hex}).encode()
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    def __enter__(self) -> DownloadLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        started = time.monotonic()
        deadline = started + self.wait_seconds
        seen: bytes | None = None
        seen_since = started
        last_logged = started
        while not self._try_create():
            now = time.monotonic()
            state = self._state()
            if state != seen:
                seen, seen_since = state, now
            elif state is not None and now - seen_since >= LOCK_STALE_SECONDS:
                self._take_over(state, now - seen_since)
                seen = None
                continue
            if now >= deadline:
                raise LockWaitTimeout(
                    f"another process ({_describe_holder(seen)}) has been fetching into {self.path.parent}; this "
                    f"one waited {self.wait_seconds:.0f} s, its limit, while that process kept its lock "
                    f"{self.path.name} fresh. Let that download finish (its log shows the progress) and "
                    f"restart this worker; if nothing is downloading any more, delete {self.path}."
                )
            if now - last_logged >= WAIT_LOG_INTERVAL_SECONDS:
                last_logged = now
                log.info("waiting for %s to finish fetching into %s (%.0f s so far)",
                         _describe_holder(seen), self.path.parent, now - started)
            time.sleep(max(0.0, min(LOCK_POLL_SECONDS, deadline - now)))
        self._refresher = threading.Thread(target=self._keep_fresh, name="download-lock", daemon=True)
        self._refresher.start()

    def release(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join()
        if self._read() == self._content:
            self.path.unlink(missing_ok=True)

    def _try_create(self) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(descriptor, self._content)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return True

    def _state(self) -> bytes | None:
        """What identifies the lock file as it is now (its holder and last refresh); None if gone."""
        try:
            with open(self.path, "rb") as file:  # opening revalidates a network filesystem's cache
                content = file.read()
                modified = os.fstat(file.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None
        return content + b"\0" + str(modified).encode()

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _take_over(self, stale_state: bytes, unchanged_seconds: float) -> None:
        """Remove a lock whose holder stopped refreshing it, unless another waiter already did."""
        stale_content = stale_state.rpartition(b"\0")[0]
        moved = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, moved)
        except FileNotFoundError:
            return
        if moved.read_bytes() == stale_content:
            moved.unlink()
            log.warning("%s was not refreshed for %.0f s: its holder (%s) is gone; taking over its unfinished "
                        "download", self.path, unchanged_seconds, _describe_holder(stale_state))
            return
        # Another waiter took the stale lock over between our last look and the rename: give it back.
        try:
            os.link(moved, self.path)
        except OSError:
            log.warning("could not put back the download lock %s taken from a live holder", self.path)
        moved.unlink(missing_ok=True)

    def _keep_fresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_SECONDS):
            if self._read() != self._content:
                log.warning("the download lock %s is no longer this process's; another process may fetch too",
                            self.path)
                return
            try:
                os.utime(self.path)
            except OSError as error:
                log.warning("could not refresh the download lock %s (%s)", self.path, error)


def _holder_name() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def _describe_holder(state: bytes | None) -> str:
    """'HOST pid N since TIME' from a lock file's content, as far as it can be read."""
    try:
        record = json.loads((state or b"").rpartition(b"\0")[0] or state or b"")
        return f"{record['holder']}, since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no name"


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _cached_snapshots(runpod_cache: Path, repo_id: str) -> list[Path]:
    """The repository's snapshots in RunPod's model cache, newest first (a placeholder when none)."""
    snapshots = runpod_cache / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    cached = sorted(snapshots.iterdir(), key=_modified_time, reverse=True) if snapshots.is_dir() else []
    return cached or [snapshots / "<commit>"]


class LoggedProgress(tqdm):
    """A progress bar that writes a log line every 30 s instead of redrawing a terminal line.

    RunPod's log viewer shows each carriage-return redraw of a normal bar as a new line.
    """

    LOG_INTERVAL_SECONDS = 30.0

    def __init__(self, *args, **kwargs) -> None:
        kwargs["disable"] = False
        kwargs["file"] = open(os.devnull, "w")  # closed in close()
        super().__init__(*args, **kwargs)
        self._last_logged = 0.0

    def update(self, n: float | None = 1) -> bool | None:
        shown = super().update(n)
        now = time.monotonic()
        finished = self.total is not None and self.total > 0 and self.n >= self.total
        if finished or now - self._last_logged >= self.LOG_INTERVAL_SECONDS:
            self._last_logged = now
            log.info("%s", self._describe())
        return shown

    def close(self) -> None:
        file = self.fp
        super().close()
        file.close()

    def _describe(self) -> str:
        done = self.format_sizeof(self.n) if self.unit == "B" else f"{self.n:.0f}"
        total = "?" if not self.total else (self.format_sizeof(self.total) if self.unit == "B" else f"{self.total:.0f}")
        rate = self.format_dict.get("rate")
        speed = f", {self.format_sizeof(rate)}{self.unit}/s" if rate else ""
        return f"{self.desc or 'download'}: {done}/{total}{self.unit if self.unit == 'B' else ''}{speed}"


def failure_reason(error: Exception) -> str:
    return _redact_token(f"{type(error).__name__}: {error}".splitlines()[0])


def _redact_token(text: str) -> str:
    # huggingface_hub's own lookup: the token it sends (HF_TOKEN, or a saved `hf auth login`), which
    # is the one an error text can echo.
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "<HF_TOKEN>") if token else text


def _modified_time(path: Path) -> float:
    return path.stat().st_mtime

