"""Finding the Wan2.2-S2V checkpoint, choosing what to download, and failing clearly without it.

Downloads go to a fake Hugging Face Hub on 127.0.0.1; the lock between workers that share a
models folder is tested with real processes racing on one folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
from huggingface_hub.utils import filter_repo_objects, http_backoff

from model import weights
from model.base import ModelUnavailableError
from model.wan_s2v.declaration import CHECKPOINT_REPO_ID, CHECKPOINT_WEIGHTS, LORA_FILE, LORA_REPO_ID, LORA_WEIGHTS
from model.weights import FINISHED_MARKER_NAME, LOCK_FILE_NAME, LoggedProgress, candidate_folders, ensure, locate

SKIPPED_PATTERNS = CHECKPOINT_WEIGHTS.ignore_patterns


def download_patterns(repo_files: list[str]) -> list[str]:
    return weights.download_patterns(CHECKPOINT_WEIGHTS, repo_files)


def missing_files(folder: Path) -> list[str]:
    return weights.missing(CHECKPOINT_WEIGHTS, folder)


def locate_weights(model_dir: Path, cache: Path, image: Path) -> Path | None:
    return locate(CHECKPOINT_WEIGHTS, model_dir, cache, image)


def locate_lora(model_dir: Path, cache: Path, image: Path) -> Path | None:
    """The LoRA's file where it was found, or None."""
    folder = locate(LORA_WEIGHTS, model_dir, cache, image)
    return None if folder is None else folder / LORA_FILE


def ensure_weights(model_dir: Path, cache: Path, image: Path, **kwargs) -> Path:
    return ensure(CHECKPOINT_WEIGHTS, model_dir, cache, image, **kwargs)


def ensure_lora(model_dir: Path, cache: Path, image: Path, **kwargs) -> Path:
    return ensure(LORA_WEIGHTS, model_dir, cache, image, **kwargs) / LORA_FILE

ROOT = Path(__file__).resolve().parent.parent

SHARDS = ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]

# The published repository's files (Wan-AI/Wan2.2-S2V-14B), the ones that matter for the choice.
PUBLISHED_FILES = [
    ".gitattributes", "README.md", "assets/logo.png", "examples/i2v_input.JPG", "configuration.json",
    "config.json", "diffusion_pytorch_model.safetensors.index.json",
    *[f"diffusion_pytorch_model-0000{i}-of-00004.safetensors" for i in range(1, 5)],
    "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth",
    "google/umt5-xxl/special_tokens_map.json", "google/umt5-xxl/spiece.model",
    "google/umt5-xxl/tokenizer.json", "google/umt5-xxl/tokenizer_config.json",
    "wav2vec2-large-xlsr-53-english/alphabet.json", "wav2vec2-large-xlsr-53-english/config.json",
    "wav2vec2-large-xlsr-53-english/flax_model.msgpack", "wav2vec2-large-xlsr-53-english/model.safetensors",
    "wav2vec2-large-xlsr-53-english/preprocessor_config.json", "wav2vec2-large-xlsr-53-english/pytorch_model.bin",
    "wav2vec2-large-xlsr-53-english/special_tokens_map.json", "wav2vec2-large-xlsr-53-english/vocab.json",
    "wav2vec2-large-xlsr-53-english/language_model/attrs.json",
    "wav2vec2-large-xlsr-53-english/language_model/lm.binary",
    "wav2vec2-large-xlsr-53-english/language_model/unigrams.txt",
]


def write_layout(folder: Path) -> Path:
    """The official layout with placeholder contents (only presence is checked here)."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {"metadata": {}, "weight_map": {"blocks.0.w": SHARDS[0], "blocks.1.w": SHARDS[1]}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    for name in ["config.json", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", *SHARDS,
                 "google/umt5-xxl/tokenizer.json", "wav2vec2-large-xlsr-53-english/config.json",
                 "wav2vec2-large-xlsr-53-english/preprocessor_config.json",
                 "wav2vec2-large-xlsr-53-english/model.safetensors"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    return folder


def mark_finished(folder: Path) -> Path:
    (folder / FINISHED_MARKER_NAME).write_text("{}")
    return folder


def test_download_fetches_only_what_the_loader_reads():
    fetched = set(filter_repo_objects(PUBLISHED_FILES, allow_patterns=download_patterns(PUBLISHED_FILES),
                                      ignore_patterns=list(SKIPPED_PATTERNS)))
    assert fetched == {
        "config.json", "diffusion_pytorch_model.safetensors.index.json",
        *[f"diffusion_pytorch_model-0000{i}-of-00004.safetensors" for i in range(1, 5)],
        "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth",
        "google/umt5-xxl/special_tokens_map.json", "google/umt5-xxl/spiece.model",
        "google/umt5-xxl/tokenizer.json", "google/umt5-xxl/tokenizer_config.json",
        "wav2vec2-large-xlsr-53-english/alphabet.json", "wav2vec2-large-xlsr-53-english/config.json",
        "wav2vec2-large-xlsr-53-english/model.safetensors",
        "wav2vec2-large-xlsr-53-english/preprocessor_config.json",
        "wav2vec2-large-xlsr-53-english/special_tokens_map.json", "wav2vec2-large-xlsr-53-english/vocab.json",
    }


def test_wav2vec2_falls_back_to_the_bin_weights_when_the_repository_has_no_safetensors(tmp_path):
    files = [name for name in PUBLISHED_FILES if not name.endswith("model.safetensors")]
    fetched = set(filter_repo_objects(files, allow_patterns=download_patterns(files),
                                      ignore_patterns=list(SKIPPED_PATTERNS)))
    assert "wav2vec2-large-xlsr-53-english/pytorch_model.bin" in fetched
    assert not any(name.endswith(".msgpack") or "language_model" in name for name in fetched)
    folder = write_layout(tmp_path / "ckpt")
    (folder / "wav2vec2-large-xlsr-53-english/model.safetensors").unlink()
    assert missing_files(folder) == ["wav2vec2-large-xlsr-53-english/model.safetensors"]
    (folder / "wav2vec2-large-xlsr-53-english/pytorch_model.bin").write_bytes(b"x")
    assert missing_files(folder) == []


def test_a_complete_layout_has_nothing_missing_and_a_lost_shard_is_named(tmp_path):
    folder = write_layout(tmp_path / "ckpt")
    assert missing_files(folder) == []
    (folder / SHARDS[1]).unlink()
    (folder / "Wan2.1_VAE.pth").unlink()
    assert sorted(missing_files(folder)) == sorted(["Wan2.1_VAE.pth", SHARDS[1]])


T5_SHARDS = [f"models_t5_umt5-xxl-enc-bf16-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def write_text_encoder_shards(folder: Path) -> Path:
    """`folder`'s text encoder as the baked image holds it: shards and their index, no .pth."""
    (folder / "models_t5_umt5-xxl-enc-bf16.pth").unlink()
    index = {"metadata": {}, "weight_map": {f"blocks.{i}.w": shard for i, shard in enumerate(T5_SHARDS)}}
    (folder / "models_t5_umt5-xxl-enc-bf16.safetensors.index.json").write_text(json.dumps(index))
    for shard in T5_SHARDS:
        (folder / shard).write_bytes(b"x")
    return folder


def test_the_text_encoder_as_shards_counts_in_place_of_its_file_once_every_shard_is_there(tmp_path):
    folder = write_text_encoder_shards(write_layout(tmp_path / "ckpt"))
    assert missing_files(folder) == []
    (folder / T5_SHARDS[1]).unlink()
    assert missing_files(folder) == [T5_SHARDS[1]]
    (folder / "models_t5_umt5-xxl-enc-bf16.safetensors.index.json").unlink()
    assert missing_files(folder) == ["models_t5_umt5-xxl-enc-bf16.pth"]


def test_a_folder_holding_the_text_encoder_as_shards_does_not_download_its_file_again(tmp_path):
    folder = write_text_encoder_shards(write_layout(tmp_path / "ckpt"))
    patterns = weights.download_patterns(CHECKPOINT_WEIGHTS, PUBLISHED_FILES, folder)
    fetched = set(filter_repo_objects(PUBLISHED_FILES, allow_patterns=patterns, ignore_patterns=list(SKIPPED_PATTERNS)))
    everything = set(filter_repo_objects(PUBLISHED_FILES, allow_patterns=download_patterns(PUBLISHED_FILES),
                                         ignore_patterns=list(SKIPPED_PATTERNS)))
    assert fetched == everything - {"models_t5_umt5-xxl-enc-bf16.pth"}
    assert weights.download_patterns(CHECKPOINT_WEIGHTS, PUBLISHED_FILES, tmp_path / "empty") == download_patterns(
        PUBLISHED_FILES)


def test_weights_are_found_in_model_dir_download_folder_runpod_cache_and_image(tmp_path):
    model_dir, cache, image = tmp_path / "models", tmp_path / "hub", tmp_path / "image"
    model_dir.mkdir()
    assert locate_weights(model_dir, cache, image) is None

    baked = write_layout(image / "Wan2.2-S2V-14B")
    assert locate_weights(model_dir, cache, image) == baked

    snapshots = cache / "models--Wan-AI--Wan2.2-S2V-14B" / "snapshots"
    old, new = write_layout(snapshots / "aaa"), write_layout(snapshots / "bbb")
    os.utime(old, (1, 1))
    assert locate_weights(model_dir, cache, image) == new

    # the download folder counts only once its download has finished
    write_layout(model_dir / "Wan2.2-S2V-14B")
    assert locate_weights(model_dir, cache, image) == new
    mark_finished(model_dir / "Wan2.2-S2V-14B")
    assert locate_weights(model_dir, cache, image) == model_dir / "Wan2.2-S2V-14B"
    (model_dir / "Wan2.2-S2V-14B" / SHARDS[0]).unlink()  # a marker does not stand in for a lost file
    assert locate_weights(model_dir, cache, image) == new
    (model_dir / "Wan2.2-S2V-14B" / SHARDS[0]).write_bytes(b"x")

    write_layout(model_dir)
    assert locate_weights(model_dir, cache, image) == model_dir
    first_two = candidate_folders(CHECKPOINT_WEIGHTS, model_dir, cache, image)[:2]
    assert first_two == [model_dir, model_dir / "Wan2.2-S2V-14B"]


def write_lora_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LORA_FILE).write_bytes(b"lora")
    return folder / LORA_FILE


def test_the_lora_is_found_in_model_dir_download_folder_runpod_cache_and_image(tmp_path):
    model_dir, cache, image = tmp_path / "models", tmp_path / "hub", tmp_path / "image"
    model_dir.mkdir()
    assert locate_lora(model_dir, cache, image) is None

    baked = write_lora_file(image / "Live-Avatar")
    assert locate_lora(model_dir, cache, image) == baked

    snapshots = cache / "models--Quark-Vision--Live-Avatar" / "snapshots"
    old, new = write_lora_file(snapshots / "aaa"), write_lora_file(snapshots / "bbb")
    os.utime(old.parent, (1, 1))
    assert locate_lora(model_dir, cache, image) == new

    downloaded = write_lora_file(model_dir / "Live-Avatar")
    assert locate_lora(model_dir, cache, image) == new
    mark_finished(downloaded.parent)
    assert locate_lora(model_dir, cache, image) == downloaded

    beside_the_weights = write_lora_file(model_dir)
    assert locate_lora(model_dir, cache, image) == beside_the_weights


def test_the_base_weights_are_found_without_any_lora(tmp_path):
    model_dir, cache, image = tmp_path / "models", tmp_path / "hub", tmp_path / "image"
    folder = mark_finished(write_layout(model_dir / "Wan2.2-S2V-14B"))
    assert locate_lora(model_dir, cache, image) is None
    assert locate_weights(model_dir, cache, image) == folder
    assert ensure_weights(model_dir, cache, image, endpoint="http://127.0.0.1:9") == folder


@pytest.fixture
def hub_gives_up_at_once(monkeypatch):
    """huggingface_hub retries a refused connection 5 times over ~23 s before it raises; the worker's
    answer to that error is what is tested, so the hub client gives up on the first refusal."""
    monkeypatch.setitem(http_backoff.__kwdefaults__, "max_retries", 0)


def test_an_unreachable_hub_fails_with_where_it_looked_and_never_the_token(
    tmp_path, monkeypatch, caplog, hub_gives_up_at_once
):
    token = "hf_secretTokenThatMustNotLeak"
    monkeypatch.setenv("HF_TOKEN", token)
    with socket.socket() as sock:  # a port nobody listens on: the download cannot connect
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    model_dir = tmp_path / "models"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelUnavailableError) as raised:
        ensure_weights(model_dir, tmp_path / "hub", tmp_path / "image", endpoint=f"http://127.0.0.1:{closed_port}")
    message = str(raised.value)
    assert str(model_dir) in message and str(tmp_path / "hub") in message
    assert str(tmp_path / "image" / "Wan2.2-S2V-14B") in message
    assert "HF_TOKEN" in message
    assert token not in message and token not in caplog.text


@pytest.mark.parametrize("saved_by", ["HF_TOKEN", "hf auth login"])
def test_a_failure_that_echoes_the_token_names_it_without_its_value(tmp_path, monkeypatch, caplog, saved_by):
    token = "hf_secretTokenThatMustNotLeak"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    token_file = tmp_path / "hf-home" / "token"
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(token_file))
    if saved_by == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", token)
    else:  # where `hf auth login` saves it; huggingface_hub sends it from there too
        token_file.parent.mkdir()
        token_file.write_text(token)

    def echoing_download(spec, target, endpoint=None):
        raise RuntimeError(f"407 from the proxy for a request with 'Authorization: Bearer {token}'\nmore detail")

    monkeypatch.setattr(weights, "download", echoing_download)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelUnavailableError) as raised:
        ensure_weights(tmp_path / "models", tmp_path / "hub", tmp_path / "image")
    message = str(raised.value)
    assert "RuntimeError: 407 from the proxy for a request with 'Authorization: Bearer <HF_TOKEN>'" in message
    assert token not in message and token not in caplog.text


def test_download_progress_goes_to_the_log_not_the_terminal(caplog, capsys, monkeypatch):
    monkeypatch.setattr(LoggedProgress, "LOG_INTERVAL_SECONDS", 0.0)
    caplog.set_level(logging.INFO, logger=weights.__name__)
    with LoggedProgress(total=2_000_000, unit="B", desc="Downloading bytes") as bar:
        bar.update(1_000_000)
        bar.update(1_000_000)
    assert "Downloading bytes: 1.00M/2.00MB" in caplog.text
    assert "Downloading bytes: 2.00M/2.00MB" in caplog.text
    assert capsys.readouterr().err == ""


class FakeHub:
    """The few Hub endpoints a snapshot download uses, serving repositories' files, on 127.0.0.1."""

    @staticmethod
    def commit(repo_id: str) -> str:
        """The repository's one commit; distinct per repository, as huggingface_hub's caches assume."""
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        import http.server
        import threading

        hub = self
        self.repos = repos
        self.requests: list[tuple[str, str, str | None]] = []
        # file name -> released: its GET sends half the file, then waits for the release
        self.held: dict[str, threading.Event] = {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?")[0]
                hub.requests.append((self.command, path, self.headers.get("Authorization")))
                for repo_id, files in hub.repos.items():
                    if path.startswith(f"/api/models/{repo_id}/revision/"):
                        return self._json({"id": repo_id, "sha": hub.commit(repo_id),
                                           "siblings": [{"rfilename": name} for name in files]}, body)
                    if path.startswith(f"/api/models/{repo_id}/tree/"):
                        listing = [
                            {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                            for name, data in files.items()
                        ]
                        return self._json(listing, body)
                    prefix = f"/{repo_id}/resolve/"
                    name = path[len(prefix):].partition("/")[2] if path.startswith(prefix) else None
                    if name in files:
                        data = files[name]
                        self.send_response(200)
                        self.send_header("X-Repo-Commit", hub.commit(repo_id))
                        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        if body:
                            self._send_file(name, data)
                        return
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _send_file(self, name: str, data: bytes) -> None:
                released = hub.held.get(name)
                try:
                    if released is not None:
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        released.wait(timeout=60)  # a test that forgets to release still ends
                        data = data[len(data) // 2:]
                    self.wfile.write(data)
                except OSError:  # the downloading process was killed
                    pass

            def _json(self, value, body: bool) -> None:
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gets(self, name: str) -> int:
        """How many times a file's contents were requested."""
        fetches = {f"/{repo}/resolve/{self.commit(repo)}/{name}" for repo in self.repos}
        return sum(1 for method, path, _ in self.requests if method == "GET" and path in fetches)

    def close(self) -> None:
        for released in self.held.values():
            released.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_download_fetches_the_loaders_files_with_the_token_and_logs_progress(tmp_path, monkeypatch, caplog):
    token = "hf_secretTokenThatMustNotLeak"
    monkeypatch.setenv("HF_TOKEN", token)
    index = {"metadata": {}, "weight_map": {
        "a": "diffusion_pytorch_model-00001-of-00004.safetensors",
        **{f"b{i}": f"diffusion_pytorch_model-0000{i}-of-00004.safetensors" for i in range(2, 5)},
    }}
    files = {name: f"contents of {name}".encode() for name in PUBLISHED_FILES}
    files["diffusion_pytorch_model.safetensors.index.json"] = json.dumps(index).encode()
    hub = FakeHub({CHECKPOINT_REPO_ID: files})
    caplog.set_level(logging.INFO)
    try:
        folder = ensure_weights(tmp_path / "models", tmp_path / "hub", tmp_path / "image", endpoint=hub.url)
    finally:
        hub.close()
    assert folder == tmp_path / "models" / "Wan2.2-S2V-14B"
    assert missing_files(folder) == []
    downloaded = {path[len(f"/{CHECKPOINT_REPO_ID}/resolve/{FakeHub.commit(CHECKPOINT_REPO_ID)}/"):]
                  for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert "wav2vec2-large-xlsr-53-english/model.safetensors" in downloaded
    assert not any(
        name.endswith((".bin", ".msgpack")) or "language_model" in name or name.startswith(("assets", "examples"))
        for name in downloaded
    )
    assert (folder / "google/umt5-xxl/spiece.model").read_bytes() == b"contents of google/umt5-xxl/spiece.model"
    assert all(auth == f"Bearer {token}" for _, _, auth in hub.requests)
    assert "Downloading bytes" in caplog.text or "Fetching" in caplog.text
    assert token not in caplog.text
    # a second start finds them and downloads nothing
    assert locate_weights(tmp_path / "models", tmp_path / "hub", tmp_path / "image") == folder


def test_an_unreachable_hub_fails_for_the_lora_with_where_it_looked_and_never_the_token(
    tmp_path, monkeypatch, caplog, hub_gives_up_at_once
):
    token = "hf_secretTokenThatMustNotLeak"
    monkeypatch.setenv("HF_TOKEN", token)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    model_dir, cache, image = tmp_path / "models", tmp_path / "hub", tmp_path / "image"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelUnavailableError) as raised:
        ensure_lora(model_dir, cache, image, endpoint=f"http://127.0.0.1:{closed_port}")
    message = str(raised.value)
    for place in (model_dir / LORA_FILE, model_dir / "Live-Avatar" / LORA_FILE, image / "Live-Avatar" / LORA_FILE,
                  cache / "models--Quark-Vision--Live-Avatar" / "snapshots" / "<commit>" / LORA_FILE):
        assert str(place) in message
    assert LORA_REPO_ID in message and "HF_TOKEN" in message
    assert token not in message and token not in caplog.text


LORA_REPO_FILES = {".gitattributes": b"*.safetensors filter=lfs", "README.md": b"# Live Avatar",
                   "assets/demo.mp4": b"video", LORA_FILE: b"the lora tensors"}


def test_a_lora_download_fetches_that_one_file_with_the_token(tmp_path, monkeypatch, caplog):
    token = "hf_secretTokenThatMustNotLeak"
    monkeypatch.setenv("HF_TOKEN", token)
    hub = FakeHub({LORA_REPO_ID: LORA_REPO_FILES})
    caplog.set_level(logging.INFO)
    model_dir, cache, image = tmp_path / "models", tmp_path / "hub", tmp_path / "image"
    try:
        path = ensure_lora(model_dir, cache, image, endpoint=hub.url)
    finally:
        hub.close()
    assert path == model_dir / "Live-Avatar" / LORA_FILE
    assert path.read_bytes() == b"the lora tensors"
    downloaded = [
        request_path for method, request_path, _ in hub.requests if method == "GET" and "/resolve/" in request_path
    ]
    assert downloaded == [f"/{LORA_REPO_ID}/resolve/{FakeHub.commit(LORA_REPO_ID)}/{LORA_FILE}"]
    assert all(auth == f"Bearer {token}" for _, _, auth in hub.requests)
    assert token not in caplog.text
    # a second start finds it and downloads nothing
    assert locate_lora(model_dir, cache, image) == path


def _published_checkpoint() -> dict[str, bytes]:
    index = {"metadata": {}, "weight_map": {f"b{i}": f"diffusion_pytorch_model-0000{i}-of-00004.safetensors"
                                            for i in range(1, 5)}}
    files = {name: f"contents of {name}".encode() for name in PUBLISHED_FILES}
    files["diffusion_pytorch_model.safetensors.index.json"] = json.dumps(index).encode()
    return files


@pytest.mark.parametrize("skip_lora", [False, True])
def test_the_download_script_fills_a_model_dir_as_a_worker_would(tmp_path, skip_lora):
    hub = FakeHub({CHECKPOINT_REPO_ID: _published_checkpoint(), LORA_REPO_ID: LORA_REPO_FILES})
    model_dir = tmp_path / "models"
    try:
        result = run_download_script(tmp_path, hub, model_dir, *(["--no-lora"] if skip_lora else []))
    finally:
        hub.close()
    assert result.returncode == 0, result.stderr
    assert locate_weights(model_dir, tmp_path / "cache", tmp_path / "image") == model_dir / "Wan2.2-S2V-14B"
    assert (model_dir / "Wan2.2-S2V-14B" / FINISHED_MARKER_NAME).is_file()
    assert not (model_dir / LOCK_FILE_NAME).exists()
    lora_requests = [path for _, path, _ in hub.requests if LORA_REPO_ID in path]
    if skip_lora:
        assert locate_lora(model_dir, tmp_path / "cache", tmp_path / "image") is None and not lora_requests
    else:
        assert locate_lora(model_dir, tmp_path / "cache", tmp_path / "image") == model_dir / "Live-Avatar" / LORA_FILE


def test_the_download_script_says_why_it_failed_without_a_traceback(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    blocker = tmp_path / "models"
    blocker.write_text("a file where the models folder should be")
    result = subprocess.run([sys.executable, "scripts/download_models.py", "--model-dir", str(blocker)], cwd=ROOT,
                            env={**os.environ, "HF_ENDPOINT": closed, "HF_HOME": str(tmp_path / "hf-home")},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert f"fetching {CHECKPOINT_REPO_ID} into {blocker} failed" in result.stderr
    assert "again to resume" in result.stderr
    assert "Traceback" not in result.stderr


# --- Workers sharing one models folder, as real processes --------------------------------------

SHARD = "diffusion_pytorch_model-00002-of-00004.safetensors"
START_TIMEOUT = 60


def fetched_files(repo: dict[str, bytes]) -> list[str]:
    """The checkpoint files a download brings."""
    return list(filter_repo_objects(list(repo), allow_patterns=download_patterns(list(repo)),
                                    ignore_patterns=list(SKIPPED_PATTERNS)))


def run_download_script(tmp_path: Path, hub: FakeHub, model_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": "hf_test"}
    return subprocess.run([sys.executable, "scripts/download_models.py", "--model-dir", str(model_dir), *args],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)


class WorkerStart:
    """tests/weights_worker_start.py in its own process: one worker's start, stderr kept in a file."""

    def __init__(self, tmp_path: Path, name: str, model_dir: Path, hub: FakeHub, *, stale: float, refresh: float,
                 wait: float, command: list[str] | None = None) -> None:
        self.log = tmp_path / f"{name}.log"
        self.stdout = tmp_path / f"{name}.out"
        command = command or [sys.executable, str(ROOT / "tests" / "weights_worker_start.py"), str(model_dir), hub.url,
                              str(stale), str(refresh), str(wait)]
        environment = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / f"hf-home-{name}")}
        with open(self.log, "w") as log, open(self.stdout, "w") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=log)

    def logged(self) -> str:
        return self.log.read_text()

    def finish(self) -> tuple[int, dict | None]:
        code = self.process.wait(timeout=START_TIMEOUT)
        lines = self.stdout.read_text().splitlines()
        return code, (json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_until(condition, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def held_hub():
    """A hub whose GET of one shard stalls half way until the test releases it."""
    hub = FakeHub({CHECKPOINT_REPO_ID: _published_checkpoint(), LORA_REPO_ID: LORA_REPO_FILES})
    hub.held[SHARD] = threading.Event()
    yield hub
    hub.close()


def test_two_starts_on_one_folder_download_once_and_both_use_the_finished_files(tmp_path, held_hub):
    hub, model_dir = held_hub, tmp_path / "volume" / "models"
    # The first is the download script filling the volume, the second a worker starting meanwhile.
    first = WorkerStart(tmp_path, "script", model_dir, hub, stale=0, refresh=0, wait=0,
                        command=[sys.executable, "scripts/download_models.py", "--model-dir", str(model_dir)])
    second = None
    try:
        wait_until(lambda: hub.gets(SHARD) == 1, "the first download to reach the held shard")
        second = WorkerStart(tmp_path, "worker", model_dir, hub, stale=60, refresh=0.1, wait=60)
        wait_until(lambda: "waiting for" in second.logged(), "the second start to wait")
        assert not (model_dir / "Wan2.2-S2V-14B" / FINISHED_MARKER_NAME).exists()
        hub.held[SHARD].set()
        first_code, _ = first.finish()
        second_code, second_result = second.finish()
    finally:
        first.stop()
        if second:
            second.stop()
    assert first_code == 0, first.logged()
    assert second_code == 0, second.logged()
    assert second_result == {
        "weights": str(model_dir / "Wan2.2-S2V-14B"), "lora": str(model_dir / "Live-Avatar" / LORA_FILE)
    }
    fetched = [*fetched_files(_published_checkpoint()), LORA_FILE]
    assert {name: hub.gets(name) for name in fetched} == {name: 1 for name in fetched}
    assert "by another process while this one waited" in second.logged()
    for folder in ("Wan2.2-S2V-14B", "Live-Avatar"):
        assert (model_dir / folder / FINISHED_MARKER_NAME).is_file()
    assert (model_dir / "Wan2.2-S2V-14B" / SHARD).read_bytes() == f"contents of {SHARD}".encode()
    assert not (model_dir / LOCK_FILE_NAME).exists()


def test_a_killed_download_leaves_no_marker_and_the_next_start_takes_over_and_resumes(tmp_path, held_hub):
    hub, model_dir = held_hub, tmp_path / "models"
    target = model_dir / "Wan2.2-S2V-14B"
    others = [name for name in fetched_files(_published_checkpoint()) if name != SHARD]
    killed = WorkerStart(tmp_path, "killed", model_dir, hub, stale=60, refresh=0.1, wait=60)
    try:
        wait_until(lambda: hub.gets(SHARD) == 1 and all((target / name).is_file() for name in others),
                   "the first start to hold every file but the stalled shard")
        wait_until(lambda: list(target.glob(".cache/huggingface/download/*.incomplete")), "the shard's partial file")
        killed.process.kill()
        killed.process.wait()
    finally:
        killed.stop()
    assert (model_dir / LOCK_FILE_NAME).is_file()
    assert not (target / FINISHED_MARKER_NAME).exists()
    assert locate_weights(model_dir, tmp_path / "nowhere", tmp_path / "nowhere") is None

    hub.held[SHARD].set()
    started = time.monotonic()
    resumed = WorkerStart(tmp_path, "resumed", model_dir, hub, stale=1.0, refresh=0.1, wait=60)
    try:
        code, result = resumed.finish()
    finally:
        resumed.stop()
    assert code == 0, resumed.logged()
    assert time.monotonic() - started >= 1.0
    assert f"pid {killed.process.pid}" in resumed.logged() and "taking over its unfinished download" in resumed.logged()
    assert result["weights"] == str(target) and (target / FINISHED_MARKER_NAME).is_file()
    assert hub.gets(SHARD) == 2 and all(hub.gets(name) == 1 for name in others)  # resumed, not restarted
    assert (target / SHARD).read_bytes() == f"contents of {SHARD}".encode()
    assert not list(target.glob(".cache/huggingface/download/*.incomplete"))
    assert not (model_dir / LOCK_FILE_NAME).exists()


def test_a_live_download_is_never_taken_over_and_a_waiter_gives_up_at_its_deadline(tmp_path, held_hub):
    hub, model_dir = held_hub, tmp_path / "models"
    holder = WorkerStart(tmp_path, "holder", model_dir, hub, stale=60, refresh=0.1, wait=60)
    waiter = None
    try:
        wait_until(lambda: hub.gets(SHARD) == 1, "the holder to reach the held shard")
        # stale after 0.5 s without a refresh, gives up after 2 s: the holder refreshes every 0.1 s
        waiter = WorkerStart(tmp_path, "waiter", model_dir, hub, stale=0.5, refresh=0.1, wait=2)
        code, result = waiter.finish()
        assert holder.process.poll() is None
        hub.held[SHARD].set()
        holder_code, holder_result = holder.finish()
    finally:
        holder.stop()
        if waiter:
            waiter.stop()
    assert code == 3
    message = result["error"]
    assert f"pid {holder.process.pid}" in message and "waited 2 s" in message
    assert str(model_dir / LOCK_FILE_NAME) in message and "restart this worker" in message
    assert "taking over" not in waiter.logged()
    assert holder_code == 0 and holder_result["weights"] == str(model_dir / "Wan2.2-S2V-14B")
    assert hub.gets(SHARD) == 1
