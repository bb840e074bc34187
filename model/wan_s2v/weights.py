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
from pathlib import Path
from typing import Callable

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
    """The first complete checkpoint folder, or None."""
    for folder in candidate_folders(model_dir, runpod_cache, image_dir):
        if folder.is_dir() and not missing_files(folder):
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
    log.info("Wan2.2-S2V weights are not in %s; downloading %s into %s", looked, REPO_ID, target)
    try:
        download_weights(target, endpoint=endpoint)
    except Exception as error:  # noqa: BLE001 - any failure here means the same thing to the user
        reason = _failure_reason(error)
        raise ModelUnavailableError(
            f"the Wan2.2-S2V-14B weights were not found (looked in {looked}) and downloading "
            f"{REPO_ID} into {target} failed ({reason}); attach a network volume that holds them, "
            "enable RunPod's model cache for that repository, or set HF_TOKEN and check the "
            "network and free disk space."
        ) from error
    still_missing = missing_files(target)
    if still_missing:
        raise ModelUnavailableError(
            f"the download of {REPO_ID} into {target} finished without {', '.join(still_missing)}; "
            "delete that folder and restart the worker."
        )
    return target


def download_weights(target: Path, endpoint: str | None = None) -> Path:
    """Fetch the files the loader reads into `target`; an interrupted download resumes.

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
    folders = [model_dir, model_dir / LORA_DOWNLOAD_FOLDER_NAME, *_cached_snapshots(runpod_cache, LORA_REPO_ID), image_dir]
    return [folder / LORA_FILE for folder in folders]


def locate_lora(
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_dir: Path = IMAGE_LORA_DIR,
) -> Path | None:
    """The first Live Avatar LoRA file found, or None."""
    return next((file for file in lora_candidate_files(model_dir, runpod_cache, image_dir) if file.is_file()), None)


def ensure_lora(
    model_dir: Path,
    runpod_cache: Path = RUNPOD_MODEL_CACHE,
    image_dir: Path = IMAGE_LORA_DIR,
    endpoint: str | None = None,
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
    log.info("the Live Avatar LoRA is not at %s; downloading %s from %s into %s", looked, LORA_FILE, LORA_REPO_ID, target)
    try:
        download_lora(target, endpoint=endpoint)
    except Exception as error:  # noqa: BLE001 - any failure here means the same thing to the user
        raise ModelUnavailableError(
            f"the Live Avatar LoRA of the fast mode was not found (looked at {looked}) and downloading "
            f"{LORA_FILE} of {LORA_REPO_ID} into {target} failed ({_failure_reason(error)}); attach a "
            "network volume that holds it, enable RunPod's model cache for that repository, or set "
            "HF_TOKEN and check the network and free disk space."
        ) from error
    downloaded = target / LORA_FILE
    if not downloaded.is_file():
        raise ModelUnavailableError(
            f"the download of {LORA_REPO_ID} into {target} finished without {LORA_FILE}; check that the "
            "repository still publishes that file, then restart the worker."
        )
    return downloaded


def download_lora(target: Path, endpoint: str | None = None) -> Path:
    """Fetch the Live Avatar LoRA file into `target`; the token comes from HF_TOKEN as for the weights."""
    return _download(LORA_REPO_ID, target, [LORA_FILE], [], endpoint)


def _download(repo_id: str, target: Path, allow_patterns: list[str], ignore_patterns: list[str], endpoint: str | None) -> Path:
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
        kwargs["file"] = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
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


def _failure_reason(error: Exception) -> str:
    return _redact_token(f"{type(error).__name__}: {error}".splitlines()[0])


def _redact_token(text: str) -> str:
    token = os.environ.get("HF_TOKEN")
    return text.replace(token, "<HF_TOKEN>") if token else text


def _modified_time(path: Path) -> float:
    return path.stat().st_mtime

