"""Where a backend's weights are, and fetching them once when they are nowhere.

A backend declares its weights as WeightSpecs (model/declaration.py). Each is looked for, in
order, in MODEL_DIR itself, in MODEL_DIR/`folder` (where a download lands), in RunPod's
cached-model store on the network volume, and in the copy scripts/download_models.py bakes into
the image. Only when none is complete is it downloaded, into MODEL_DIR/`folder`.

Workers that start together on one network volume share MODEL_DIR, and RunPod warns that
concurrent writes to a volume can corrupt it. So every download runs under one lock file in
MODEL_DIR (one download at a time, whoever holds it keeps it fresh; the others wait, and take over
a lock whose holder stopped refreshing it), and a download folder counts only once its
finished-marker, written last, is there: a download that was killed leaves none, and the next
start resumes it.

The Hugging Face token comes from HF_TOKEN (read by huggingface_hub itself), so it is never in our
logs; error texts that echo it are redacted before they are logged or raised.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from tqdm.auto import tqdm

from model.base import ModelUnavailableError
from model.declaration import WeightSpec
from model.utc import utc_text

log = logging.getLogger(__name__)

# RunPod's "cached models" put a Hugging Face cache on the volume; snapshots are named by commit.
RUNPOD_MODEL_CACHE = Path("/runpod-volume/huggingface-cache/hub")
# Where scripts/download_models.py puts the weights by default, which is what the Dockerfile's
# `baked` stage runs: the same layout as a download into MODEL_DIR.
IMAGE_MODEL_DIR = Path("/models")

# One lock per models folder, for every download; a finished-marker in each download folder.
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
# deploy tooling gives RunPod (DeployProfile.init_timeout_seconds), so that a worker says why it
# gave up before RunPod kills it as unhealthy.
LOCK_WAIT_SECONDS = 50 * 60
WAIT_LOG_INTERVAL_SECONDS = 30.0


# --- What a complete copy holds ---------------------------------------------------------------


def missing(spec: WeightSpec, folder: Path) -> list[str]:
    """The files of `spec` absent from `folder` (empty: the folder is a complete copy)."""
    absent = [name for name in spec.required_files if not (folder / name).is_file()]
    absent += [group[0] for group in spec.any_of if not any((folder / name).is_file() for name in group)]
    for name in spec.required_folders:
        inside = folder / name
        if not inside.is_dir() or not any(inside.iterdir()):
            absent.append(f"{name}/")
    for name in spec.shard_indexes:
        index = folder / name
        if not index.is_file():
            continue  # named by required_files when it is required
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as error:
            absent.append(f"{name} (unreadable: {error})")
            continue
        # shards are named relative to their index's folder, as read_safetensors reads them
        inside = Path(name).parent
        absent += [str(inside / shard) for shard in shards if not (index.parent / shard).is_file()]
    return absent


def download_patterns(spec: WeightSpec, repo_files: list[str], folder: Path | None = None) -> list[str]:
    """The allow-patterns for a repository with these files: the spec's, plus from each `any_of`
    group the file `folder` already holds, else the first file the repository has (its first
    when it has none, so the download says so)."""
    declared = spec.allow_patterns or (*spec.required_files, *(f"{name}/*" for name in spec.required_folders))
    # A group the folder already satisfies fetches nothing more, even with a form the repository
    # lacks: the baked image holds the text encoder as shards and must not fetch its .pth again.
    chosen = [
        next((name for name in group if folder is not None and (folder / name).is_file()), None)
        or next((name for name in group if name in repo_files), group[0])
        for group in spec.any_of
    ]
    return [*declared, *chosen]


def is_finished(spec: WeightSpec, folder: Path) -> bool:
    """Whether a download folder holds its finished-marker (of the pinned revision) and nothing is missing."""
    marker = folder / FINISHED_MARKER_NAME
    if not marker.is_file():
        return False
    if spec.revision is not None and _marker_revision(marker) != spec.revision:
        return False
    return not missing(spec, folder)


# --- Finding a copy ---------------------------------------------------------------------------


def candidate_folders(
    spec: WeightSpec,
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_model_dir: Path = IMAGE_MODEL_DIR,
) -> list[Path]:
    """Every place a copy of `spec` may be, in the order they are tried."""
    return [
        model_dir,
        model_dir / spec.folder,
        *_cached_snapshots(runpod_cache, spec.repo_id, spec.revision),
        image_model_dir / spec.folder,
    ]


def locate(
    spec: WeightSpec,
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_model_dir: Path = IMAGE_MODEL_DIR,
) -> Path | None:
    """The first folder holding a complete copy, or None.

    The download folder counts only with its finished-marker: its files may be another worker's
    download in progress.
    """
    download_folder = model_dir / spec.folder
    for folder in candidate_folders(spec, model_dir, runpod_cache, image_model_dir):
        if folder == download_folder:
            if is_finished(spec, folder):
                return folder
        elif folder.is_dir() and not missing(spec, folder):
            return folder
    return None


def weights_present(spec: WeightSpec, model_dir: Path) -> bool:
    """Whether a complete copy is already on this machine (no download needed)."""
    return locate(spec, model_dir) is not None


# --- Finding or fetching ----------------------------------------------------------------------


def ensure(
    spec: WeightSpec,
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_model_dir: Path = IMAGE_MODEL_DIR,
    endpoint: str | None = None,
    wait_seconds: float | None = None,
) -> Path:
    """The folder holding `spec`, downloaded into MODEL_DIR/`folder` first if it is nowhere.

    Raises ModelUnavailableError naming every place it looked and why the download failed.
    """
    found = locate(spec, model_dir, runpod_cache, image_model_dir)
    if found is not None:
        log.info("%s found in %s", spec.name, found)
        return found
    folders = candidate_folders(spec, model_dir, runpod_cache, image_model_dir)
    target = model_dir / spec.folder
    log.info("no complete copy of the %s in %s; fetching %s into %s", spec.name, _joined(folders), spec.repo_id, target)
    try:
        return download_into(spec, model_dir, endpoint=endpoint, wait_seconds=wait_seconds)
    except (LockWaitTimeout, IncompleteDownloadError) as error:
        raise ModelUnavailableError(f"{not_found_text(spec, folders)} and {error}") from error
    except Exception as error:  # any failure here means the same thing to the user
        raise ModelUnavailableError(
            f"{not_found_text(spec, folders)} and {download_failed_text(spec, target, failure_reason(error))}"
        ) from error


def not_found_text(spec: WeightSpec, folders: list[Path]) -> str:
    """'the NAME [of the MODE mode] were not found (looked in ...)'; a one-file spec names the files it looked at."""
    subject = f"the {spec.name}" + (f" of the {' and '.join(spec.modes)} mode" if spec.optional and spec.modes else "")
    single = _single_file(spec)
    if single is not None:
        return f"{subject} was not found (looked at {_joined([folder / single for folder in folders])})"
    return f"{subject} were not found (looked in {_joined(folders)})"


def download_failed_text(spec: WeightSpec, target: Path, reason: str) -> str:
    """Why fetching `spec` into `target` failed, and what to do about it (`reason` already redacted)."""
    single = _single_file(spec)
    what = f"{single} of {spec.repo_id}" if single is not None else spec.repo_id
    # RunPod caches one model per endpoint: the one worth it is the backend's required weights.
    cache_advice = "" if spec.optional else "enable RunPod's model cache for that repository, "
    return (
        f"downloading {what} into {target} failed ({reason}); attach a network volume that holds "
        f"{'it' if single is not None else 'them'}, {cache_advice}or set HF_TOKEN and check the network, "
        "free disk space and that MODEL_DIR is writable."
    )


def download_into(
    spec: WeightSpec, model_dir: Path, endpoint: str | None = None, wait_seconds: float | None = None
) -> Path:
    """MODEL_DIR/`folder`, finished: downloaded (or resumed) under MODEL_DIR's lock unless it is.

    Raises LockWaitTimeout, IncompleteDownloadError, or the download's own error.
    """
    target = model_dir / spec.folder
    if is_finished(spec, target):
        return target
    model_dir.mkdir(parents=True, exist_ok=True)
    with DownloadLock(model_dir / LOCK_FILE_NAME, LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds):
        if is_finished(spec, target):
            log.info("%s was fetched into %s by another process while this one waited", spec.repo_id, target)
            return target
        (target / FINISHED_MARKER_NAME).unlink(missing_ok=True)
        _remove_partial_files(target)
        download(spec, target, endpoint)
        still_missing = missing(spec, target)
        if still_missing:
            raise IncompleteDownloadError(
                f"the download of {spec.repo_id} into {target} finished without {', '.join(still_missing)}; "
                "check that the repository still publishes them, then restart the worker (it resumes)."
            )
        _write_finished_marker(spec, target)
    return target


def download(spec: WeightSpec, target: Path, endpoint: str | None = None) -> Path:
    """Fetch the files of `spec` into `target`, without the lock; files already there are kept."""
    from huggingface_hub import HfApi, snapshot_download

    # only an `any_of` choice needs the repository's listing
    repo_files = HfApi(endpoint=endpoint).list_repo_files(spec.repo_id, revision=spec.revision) if spec.any_of else []
    target.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    snapshot_download(
        spec.repo_id,
        revision=spec.revision,
        local_dir=target,
        allow_patterns=download_patterns(spec, repo_files, target),
        ignore_patterns=list(spec.ignore_patterns),
        tqdm_class=LoggedProgress,
        endpoint=endpoint,
        etag_timeout=30,
    )
    log.info("downloaded %s into %s in %.0f s", spec.repo_id, target, time.monotonic() - started)
    return target


def download_subset(
    spec: WeightSpec, model_dir: Path, patterns: list[str], endpoint: str | None = None,
    wait_seconds: float | None = None,
) -> list[str]:
    """The files of `spec` that match one of `patterns` (fnmatch, on repository paths), fetched into
    MODEL_DIR/`folder` under MODEL_DIR's lock unless the folder is finished; [] when none match.

    Only files a full download brings are candidates, and no finished-marker is written:
    download_into, run afterwards, keeps these files and marks the folder once it is complete.
    The image bakes one component per layer this way.
    """
    from fnmatch import fnmatchcase

    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import filter_repo_objects

    repo_files = HfApi(endpoint=endpoint).list_repo_files(spec.repo_id, revision=spec.revision)
    target = model_dir / spec.folder
    fetched = filter_repo_objects(repo_files, allow_patterns=download_patterns(spec, repo_files, target),
                                  ignore_patterns=list(spec.ignore_patterns))
    chosen = [name for name in fetched if any(fnmatchcase(name, pattern) for pattern in patterns)]
    if not chosen or is_finished(spec, target):
        return chosen
    model_dir.mkdir(parents=True, exist_ok=True)
    with DownloadLock(model_dir / LOCK_FILE_NAME, LOCK_WAIT_SECONDS if wait_seconds is None else wait_seconds):
        _remove_partial_files(target)
        target.mkdir(parents=True, exist_ok=True)
        snapshot_download(spec.repo_id, revision=spec.revision, local_dir=target, allow_patterns=chosen,
                          tqdm_class=LoggedProgress, endpoint=endpoint, etag_timeout=30)
    log.info("fetched %d file(s) of %s into %s", len(chosen), spec.repo_id, target)
    return chosen


def mark_if_complete(spec: WeightSpec, model_dir: Path) -> list[str]:
    """Write MODEL_DIR/`folder`'s finished-marker if the folder is complete, fetching nothing;
    returns what is missing (empty: marked). The image's last weights step: its earlier steps
    fetched every file one layer at a time, so a file they missed must fail the build, not be
    fetched here into a layer of its own size."""
    target = model_dir / spec.folder
    absent = missing(spec, target) if target.is_dir() else [f"{spec.folder}/"]
    if not absent:
        _write_finished_marker(spec, target)
    return absent


class IncompleteDownloadError(Exception):
    """A download ended without every file it should have brought."""


class LockWaitTimeout(TimeoutError):
    """Another process held the download lock for longer than this one may wait."""


def _remove_partial_files(target: Path) -> None:
    """Partial files of a download that died (huggingface_hub restarts a file, it never continues one).

    Only called under the lock, so no live download owns them.
    """
    partial = list((target / ".cache" / "huggingface").rglob("*.incomplete")) if target.is_dir() else []
    for file in partial:
        file.unlink(missing_ok=True)
    if partial:
        log.info("removed %d partial file(s) of an interrupted download in %s", len(partial), target)


def _write_finished_marker(spec: WeightSpec, target: Path) -> None:
    """Written last, atomically: its presence means every file before it is complete."""
    record = {"repo_id": spec.repo_id, "revision": spec.revision, "finished_at": utc_text(), "by": _holder_name()}
    temporary = target / f"{FINISHED_MARKER_NAME}.{uuid.uuid4().hex}"
    with open(temporary, "w") as file:
        json.dump(record, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target / FINISHED_MARKER_NAME)
    log.info("%s is complete in %s", spec.repo_id, target)


def _marker_revision(marker: Path) -> str | None:
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    revision = record.get("revision") if isinstance(record, dict) else None
    return revision if isinstance(revision, str) else None


# --- One download per models folder ---------------------------------------------------------


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
        self._content = json.dumps({"holder": _holder_name(), "since": utc_text(), "token": uuid.uuid4().hex}).encode()
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


# --- RunPod's model cache -------------------------------------------------------------------


def _cached_snapshots(runpod_cache: Path, repo_id: str, revision: str | None) -> list[Path]:
    """The repository's snapshots in RunPod's model cache, newest first (a placeholder when none).

    A pinned revision gives its one snapshot: a branch or tag through the cache's refs/ file,
    a commit by its own name.
    """
    repo_cache = runpod_cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_cache / "snapshots"
    if revision is not None:
        ref = repo_cache / "refs" / revision
        commit = ref.read_text().strip() if ref.is_file() else revision
        return [snapshots / commit]
    cached = sorted(snapshots.iterdir(), key=_modified_time, reverse=True) if snapshots.is_dir() else []
    return cached or [snapshots / "<commit>"]


def _modified_time(path: Path) -> float:
    return path.stat().st_mtime


# --- Progress and errors, as the log shows them ---------------------------------------------


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
    """'Type: first line of the message', with the Hugging Face token taken out."""
    return redact_token(f"{type(error).__name__}: {error}".splitlines()[0])


def redact_token(text: str) -> str:
    """`text` with the token huggingface_hub sends replaced by <HF_TOKEN>."""
    # huggingface_hub's own lookup: the token it sends (HF_TOKEN, or a saved `hf auth login`), which
    # is the one an error text can echo.
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "<HF_TOKEN>") if token else text


def _single_file(spec: WeightSpec) -> str | None:
    """The one file a spec consists of, or None when it is a folder of several."""
    if len(spec.required_files) == 1 and not (spec.any_of or spec.required_folders or spec.shard_indexes):
        return spec.required_files[0]
    return None


def _joined(paths: list[Path]) -> str:
    return ", ".join(str(path) for path in paths)
