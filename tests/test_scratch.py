"""Scratch folders a killed worker leaves behind are removed at the next start; live ones are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from handler.scratch import JOB_PREFIX, MIN_AGE_SECONDS, remove_leftovers
from tests.conftest import ROOT

HOLD = """
import sys, time
from pathlib import Path
from handler.scratch import scratch_folder
with scratch_folder(parent=Path(sys.argv[1])) as folder:
    (folder / "speech.wav").write_bytes(b"x" * 1000)
    print(folder, flush=True)
    time.sleep(600)
"""


def holding_process(parent: Path) -> tuple[subprocess.Popen, Path]:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(parent)], cwd=ROOT, stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert process.stdout is not None
    folder = Path(process.stdout.readline().strip())
    assert folder.is_dir() and folder.name.startswith(JOB_PREFIX)
    return process, folder


def age(folder: Path) -> None:
    old = time.time() - 2 * MIN_AGE_SECONDS
    os.utime(folder, (old, old))


def test_a_killed_workers_folder_is_removed_and_a_live_ones_kept(tmp_path):
    killed, left = holding_process(tmp_path)
    live, in_use = holding_process(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert left.is_dir(), "a kill leaves the folder behind"
        age(left)
        age(in_use)
        assert remove_leftovers(tmp_path) == [left]
        assert not left.exists() and (in_use / "speech.wav").is_file()
    finally:
        live.kill()
        live.wait(timeout=30)


def test_a_folder_just_made_is_left_for_its_maker(tmp_path):
    young = tmp_path / f"{JOB_PREFIX}abc"
    young.mkdir()
    assert remove_leftovers(tmp_path) == [] and young.is_dir()
    age(young)
    assert remove_leftovers(tmp_path) == [young] and not young.exists()
    other = tmp_path / "someone-elses-folder"
    other.mkdir()
    age(other)
    assert remove_leftovers(tmp_path) == [] and other.is_dir()
