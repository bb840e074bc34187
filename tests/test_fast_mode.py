"""The fast mode's generation loop on tiny random models: lengths, seeds, block-by-block output,
progress, and attention rings kept in host memory. (Equality with Live Avatar's own code is in
test_fast_mode_reference.py.)"""

from __future__ import annotations

import subprocess
import types

import numpy as np
import pytest
import torch

from model.base import num_frames_for
from model.wan_common.memory import GIB
from model.wan_s2v import fast_pipeline
from model.wan_s2v.config import FAST_FPS
from model.wan_s2v.fast_pipeline import FastSampler
from model.wan_s2v.memory import RingPlan, fast_workspace_bytes, place_rings
from tests.test_wan_pipeline import tiny_pipeline
from tests.wan_tiny_models import speech_samples

SIDE = 64
STEPS = 2


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> FastSampler:
    return FastSampler(tiny_pipeline(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def portrait(sampler):
    image = np.random.default_rng(1).integers(0, 256, size=(90, 80, 3), dtype=np.uint8)
    return sampler.encode_portrait(image, SIDE, SIDE)


def frames_of(sampler, portrait, seconds: float, seed: int = 7, progress=lambda *_: None) -> list[np.ndarray]:
    return list(sampler.generate(portrait, speech_samples(seconds, seed=3), seed, "a person speaking", STEPS, progress))


@pytest.fixture(scope="module")
def generated(sampler, portrait):
    """frames_of(seconds, seed) and the progress it reported, generated once for the module by
    whichever test asks first (the tiny model's runs are most of this file's time)."""
    videos: dict[tuple[float, int], tuple[list[np.ndarray], list[tuple[float, str]]]] = {}

    def video(seconds: float, seed: int = 7) -> tuple[list[np.ndarray], list[tuple[float, str]]]:
        if (seconds, seed) not in videos:
            reports: list[tuple[float, str]] = []
            frames = frames_of(sampler, portrait, seconds, seed, lambda *report: reports.append(report))
            videos[seconds, seed] = frames, reports
        return videos[seconds, seed]

    return video


@pytest.fixture(scope="module")
def video_of(generated):
    return lambda seconds, seed=7: generated(seconds, seed)[0]


def test_the_portrait_is_encoded_as_five_frames_and_its_history_as_365(portrait):
    assert portrait.ref_latent.shape == (1, 16, 1, SIDE // 8, SIDE // 8)
    assert portrait.history_latents.shape == (1, 16, 1 + (5 * 73 - 1) // 4, SIDE // 8, SIDE // 8)


def test_the_fast_mode_runs_at_live_avatars_25_fps_and_the_quality_mode_at_wan_s2vs_16():
    """The rate each frame's speech, the MP4 and the result follow (the parity suite reads 25 from
    Live Avatar's config: tests/test_fast_mode_reference.py)."""
    from model.wan_s2v.backend import WanS2VBackend

    backend = WanS2VBackend.__new__(WanS2VBackend)  # the declaration, asked without loading weights
    assert (backend.frame_rate("fast"), backend.frame_rate("quality")) == (FAST_FPS, 16) == (25, 16)


@pytest.mark.parametrize("seconds", [0.3, 2.0])
def test_the_video_is_exactly_as_long_as_the_speech_and_leaves_a_block_at_a_time(video_of, seconds):
    blocks = video_of(seconds)
    expected = num_frames_for(seconds, FAST_FPS)  # 8 and 50 frames at 25 fps: one block, and five
    assert sum(len(block) for block in blocks) == expected
    assert all(block.shape[1:] == (SIDE, SIDE, 3) and block.dtype == np.uint8 for block in blocks)
    # 12 frames a block, the first 3 short; the last block is cut at the end of the speech
    whole = ([9] + [12] * len(blocks))[: len(blocks) - 1]
    assert [len(block) for block in blocks] == [*whole, expected - sum(whole)]
    assert 0 < expected - sum(whole) <= (9 if len(blocks) == 1 else 12)


def test_a_block_leaves_before_the_next_is_denoised(sampler, portrait, monkeypatch):
    passes = []
    forward_block = sampler.pipeline.transformer.forward_block
    monkeypatch.setattr(sampler.pipeline.transformer, "forward_block",
                        lambda *args, **kwargs: passes.append(1) or forward_block(*args, **kwargs))
    blocks = sampler.generate(portrait, speech_samples(2.0, seed=3), 7, "a person speaking", STEPS, lambda *_: None)
    next(blocks)
    assert len(passes) == STEPS  # one block's steps, nothing more
    blocks.close()


def test_same_seed_same_video_other_seed_other_video(sampler, portrait, video_of):
    first = np.concatenate(video_of(0.3, seed=7)).astype(int)
    again = np.concatenate(frames_of(sampler, portrait, 0.3, seed=7)).astype(int)  # a run of its own
    other = np.concatenate(frames_of(sampler, portrait, 0.3, seed=8)).astype(int)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1.0


def test_progress_counts_steps_and_decodes_with_time_left(generated):
    _, reports = generated(0.6)
    blocks = -(-(num_frames_for(0.6, FAST_FPS) + 3) // 12)
    assert len(reports) == blocks * (STEPS + 1)
    assert reports[-1][0] == pytest.approx(1.0)
    assert reports[0][1].startswith(f"block 1/{blocks}, step 1/{STEPS}") and "left" in reports[0][1]


@pytest.mark.parametrize("resident", [0, 1])
def test_rings_kept_in_host_memory_give_the_same_video(sampler, portrait, video_of, monkeypatch, resident):
    on_device = np.concatenate(video_of(0.6))
    monkeypatch.setattr(fast_pipeline, "place_rings", lambda ring, count, *_: RingPlan(resident, count))
    staged = np.concatenate(frames_of(sampler, portrait, 0.6))
    assert np.array_equal(on_device, staged)
    assert [len(rings) for rings in sampler._host_rings.values()] == [STEPS - resident]  # kept for the next job
    monkeypatch.undo()
    frames_of(sampler, portrait, 0.3)
    assert not sampler._host_rings  # freed once the rings fit on the device


def test_where_the_rings_go():
    """The decision on the figures of a fast job at 704x384 in bf16: four rings of 9.7 GiB, streamed
    ones through two layers' buffers (0.5 GiB), the VAE's workspace, umt5-xxl's 10.6 GiB."""
    ring, buffers, encoder = int(9.7 * GIB), int(9.7 * GIB / 20), int(10.6 * GIB)
    workspace = fast_workspace_bytes(384, 704)
    assert 6 * GIB < workspace < 7 * GIB

    def plan(room: int | None, text_encoder: int) -> RingPlan:
        return place_rings(ring, 4, buffers, workspace, room, text_encoder)

    all_four = 4 * ring + workspace
    assert plan(all_four, encoder) == RingPlan(4, 4)
    assert plan(all_four - 1, 0) == RingPlan(3, 4)  # 3, and buffers for the 4th
    assert plan(all_four - 1, encoder) == RingPlan(4, 4, move_text_encoder=True)
    assert plan(3 * ring + buffers + workspace - encoder, encoder) == RingPlan(3, 4, move_text_encoder=True)
    assert plan(ring + buffers + workspace - 1, 0) == RingPlan(0, 4)
    assert plan(buffers + workspace - 1, encoder) == RingPlan(1, 4, move_text_encoder=True)
    assert plan(workspace, 0) == RingPlan(0, 4)
    assert plan(None, 0) == RingPlan(4, 4)  # the CPU: no limit
    assert str(RingPlan(2, 4, True)) == (
        "2 of 4 on the GPU, the others streamed from host memory, once the text encoder is moved to host memory"
    )


def test_rings_that_fit_once_the_text_encoder_leaves_send_it_to_host_memory(sampler, portrait, video_of, monkeypatch):
    """The decision seam as the GPU would meet it (room for the rings only without the encoder):
    the encoder is moved once, before the rings are allocated, and the video is the same; a new
    prompt is still encoded afterwards, the encoder visiting where prompts are encoded."""
    expected = np.concatenate(video_of(0.6))
    pipe = sampler.pipeline
    moves = []
    keep_in_host_memory = pipe.keep_text_encoder_in_host_memory
    monkeypatch.setattr(fast_pipeline, "gpu_room", lambda device: 0)
    monkeypatch.setattr(pipe, "text_encoder_bytes_on", lambda device: 100 * GIB)
    monkeypatch.setattr(pipe, "keep_text_encoder_in_host_memory", lambda: (moves.append(1), keep_in_host_memory()))
    assert np.array_equal(np.concatenate(frames_of(sampler, portrait, 0.6)), expected)
    assert moves == [1] and pipe.text_encoder.model.device.type == "cpu"
    assert pipe.encode_prompt("a prompt not seen before").shape[1] == pipe.transformer.config.text_len


def test_the_fast_mode_runs_its_vae_in_the_compute_dtype_like_live_avatar(sampler):
    assert sampler.vae is sampler.pipeline.vae  # float32 here: the same VAE
    bf16 = FastSampler(types.SimpleNamespace(vae=sampler.pipeline.vae, dtype=torch.bfloat16))
    assert bf16.vae.dtype == torch.bfloat16 and sampler.pipeline.vae.dtype == torch.float32


def test_a_stream_sends_the_first_block_as_its_first_segment(video_of, tmp_path):
    """Streamed (handler/segments.py), the fast mode's first segment leaves with its first block
    of 9 frames, and each later one with the block that completes it, at 25 fps."""
    from handler.segments import SegmentPlan, SegmentWriter
    from model.wan_s2v.backend import WanS2VBackend
    from tests.mp4_facts import FFMPEG, mp4_facts

    speech = tmp_path / "speech.wav"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "sine=d=2.0", str(speech)], check=True)
    blocks = video_of(2.0)
    num_frames = sum(len(block) for block in blocks)
    # the backend's declaration, asked without loading any weights
    batches = WanS2VBackend.__new__(WanS2VBackend).frame_batches("fast")
    fps = WanS2VBackend.__new__(WanS2VBackend).frame_rate("fast")
    plan = SegmentPlan.for_batches(batches, fps)
    # docs/CONTRACT.md's arithmetic: 8 frames (0.32 s) first, then 5 blocks (2.4 s) a segment
    assert (plan.first_cut / fps, plan.step / fps) == (0.32, 2.4)
    handed_at = []
    with SegmentWriter(tmp_path / "segments", SIDE, SIDE, fps, speech, num_frames, plan,
                       lambda segment: handed_at.append(writer.frames_written)) as writer:
        for block in blocks:
            writer.write(block)
    assert handed_at[0] == len(blocks[0]) == 9, "the first segment left with the first block"
    assert set(handed_at) <= set(np.cumsum([len(block) for block in blocks])), "each with the block ending it"
    joined = tmp_path / "all.ts"
    joined.write_bytes(b"".join(path.read_bytes() for path in sorted((tmp_path / "segments").glob("*.ts"))))
    facts = mp4_facts(joined)
    assert (facts.num_frames, facts.fps) == (num_frames, 25.0)
