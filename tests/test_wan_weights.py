"""Finding the Wan2.2-S2V checkpoint, choosing what to download, and failing clearly without it."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from model.base import ModelUnavailableError
from model.wan_s2v import weights
from model.wan_s2v.weights import (
    SKIPPED_PATTERNS,
    LoggedProgress,
    candidate_folders,
    download_patterns,
    ensure_weights,
    locate_weights,
    missing_files,
)

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


def test_weights_are_found_in_model_dir_download_folder_runpod_cache_and_image(tmp_path):
    model_dir, cache, image = tmp_path / "models", tmp_path / "hub", tmp_path / "image"
    model_dir.mkdir()
    assert locate_weights(model_dir, cache, image) is None

    write_layout(image)
    assert locate_weights(model_dir, cache, image) == image

    snapshots = cache / "models--Wan-AI--Wan2.2-S2V-14B" / "snapshots"
    old, new = write_layout(snapshots / "aaa"), write_layout(snapshots / "bbb")
    os.utime(old, (1, 1))
    assert locate_weights(model_dir, cache, image) == new

    write_layout(model_dir / "Wan2.2-S2V-14B")
    assert locate_weights(model_dir, cache, image) == model_dir / "Wan2.2-S2V-14B"

    write_layout(model_dir)
    assert locate_weights(model_dir, cache, image) == model_dir
    assert candidate_folders(model_dir, cache, image)[:2] == [model_dir, model_dir / "Wan2.2-S2V-14B"]


def test_an_unreachable_hub_fails_with_where_it_looked_and_never_the_token(tmp_path, monkeypatch, caplog):
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
    assert str(model_dir) in message and str(tmp_path / "hub") in message and str(tmp_path / "image") in message
    assert "HF_TOKEN" in message
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
    """The few Hub endpoints a snapshot download uses, serving a folder, on 127.0.0.1."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, files: dict[str, bytes]) -> None:
        import hashlib
        import http.server
        import threading

        hub = self
        self.files = files
        self.requests: list[tuple[str, str, str | None]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?")[0]
                hub.requests.append((self.command, path, self.headers.get("Authorization")))
                if path.startswith(f"/api/models/{weights.REPO_ID}/revision/"):
                    return self._json({"id": weights.REPO_ID, "sha": hub.COMMIT,
                                       "siblings": [{"rfilename": name} for name in hub.files]}, body)
                if path.startswith(f"/api/models/{weights.REPO_ID}/tree/"):
                    return self._json([{"type": "file", "path": name, "size": len(data),
                                        "oid": hashlib.sha1(data).hexdigest()} for name, data in hub.files.items()], body)
                prefix = f"/{weights.REPO_ID}/resolve/"
                if path.startswith(prefix):
                    name = path[len(prefix):].split("/", 1)[1]
                    if name in hub.files:
                        data = hub.files[name]
                        self.send_response(200)
                        self.send_header("X-Repo-Commit", hub.COMMIT)
                        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        if body:
                            self.wfile.write(data)
                        return
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

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

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_download_fetches_the_loaders_files_with_the_token_and_logs_progress(tmp_path, monkeypatch, caplog):
    token = "hf_secretTokenThatMustNotLeak"
    monkeypatch.setenv("HF_TOKEN", token)
    index = {"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model-00001-of-00004.safetensors",
                                            **{f"b{i}": f"diffusion_pytorch_model-0000{i}-of-00004.safetensors" for i in range(2, 5)}}}
    files = {name: f"contents of {name}".encode() for name in PUBLISHED_FILES}
    files["diffusion_pytorch_model.safetensors.index.json"] = json.dumps(index).encode()
    hub = FakeHub(files)
    caplog.set_level(logging.INFO)
    try:
        folder = ensure_weights(tmp_path / "models", tmp_path / "hub", tmp_path / "image", endpoint=hub.url)
    finally:
        hub.close()
    assert folder == tmp_path / "models" / "Wan2.2-S2V-14B"
    assert missing_files(folder) == []
    downloaded = {path[len(f"/{weights.REPO_ID}/resolve/{FakeHub.COMMIT}/"):]
                  for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert "wav2vec2-large-xlsr-53-english/model.safetensors" in downloaded
    assert not any(name.endswith((".bin", ".msgpack")) or "language_model" in name or name.startswith(("assets", "examples"))
                   for name in downloaded)
    assert (folder / "google/umt5-xxl/spiece.model").read_bytes() == b"contents of google/umt5-xxl/spiece.model"
    assert all(auth == f"Bearer {token}" for _, _, auth in hub.requests)
    assert "Downloading bytes" in caplog.text or "Fetching" in caplog.text
    assert token not in caplog.text
    # a second start finds them and downloads nothing
    assert locate_weights(tmp_path / "models", tmp_path / "hub", tmp_path / "image") == folder
