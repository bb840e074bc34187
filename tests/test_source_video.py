"""A video to dub (handler/source_video.py): its limits, its displayed size, its frames streamed and
its decoder ended, from small ffmpeg-made videos."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from handler.cancel import JobCancelled, JobControl
from handler.errors import ErrorCode, JobError
from handler.source_video import FfmpegSourceVideo, VideoLimits, open_source_video
from tests.mp4_facts import FFMPEG

WIDTH, HEIGHT = 64, 48
ROOMY = VideoLimits(max_seconds=10.0, max_pixels=WIDTH * HEIGHT)
RED, BLUE = (255, 0, 0), (0, 0, 255)


def make_video(path: Path, *colours: str, rate: int = 10, rotation: int | None = None) -> Path:
    """A WIDTHxHEIGHT H.264 video, one second of each colour (ffmpeg's colour names)."""
    inputs = "".join(f"color={colour}:s={WIDTH}x{HEIGHT}:r={rate}:d=1[c{i}];" for i, colour in enumerate(colours))
    joined = "".join(f"[c{i}]" for i in range(len(colours)))
    graph = f"{inputs}{joined}concat=n={len(colours)}:v=1:a=0"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", graph, "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    if rotation is not None:
        rotated = path.with_name(f"rotated-{path.name}")
        subprocess.run([FFMPEG, "-v", "error", "-y", "-display_rotation", str(rotation), "-i", str(path), "-c", "copy",
                        str(rotated)], check=True)
        return rotated
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("videos")
    halves = folder / "halves.mp4"
    # the top half red, the bottom half blue: which way it turns shows in the displayed frame
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"color=red:s={WIDTH}x{HEIGHT // 2}:r=10:d=1[t];color=blue:s={WIDTH}x{HEIGHT // 2}:r=10:d=1[b];"
                    "[t][b]vstack", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(halves)], check=True)
    rotated = folder / "rotated.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-display_rotation", "90", "-i", str(halves), "-c", "copy",
                    str(rotated)], check=True)
    still = folder / "still.png"
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", f"color=red:s={WIDTH}x{HEIGHT}", "-frames:v", "1",
                    str(still)], check=True)
    cover = folder / "cover.m4a"  # speech with a cover picture: a video stream, but no video
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "sine=d=1", "-i", str(still), "-map", "0",
                    "-map", "1", "-c:a", "aac", "-c:v", "png", "-disposition:v", "attached_pic", str(cover)],
                   check=True)
    return {
        "cover": cover.read_bytes(),
        "colours": make_video(folder / "colours.mp4", "red", "blue").read_bytes(),
        "rotated": rotated.read_bytes(),
        "still": still.read_bytes(),
    }


def opened(data: bytes, tmp_path: Path, limits: VideoLimits = ROOMY) -> FfmpegSourceVideo:
    return open_source_video(data, "video_file", tmp_path, limits)


def close_to(frame: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(frame.reshape(-1, 3).mean(axis=0) - colour).max() < 40)


def test_a_video_is_probed_and_its_frames_follow_its_colours_at_the_asked_rate(videos, tmp_path):
    video = opened(videos["colours"], tmp_path)
    assert (video.width, video.height) == (WIDTH, HEIGHT)
    assert video.duration_seconds == pytest.approx(2.0, abs=0.05)
    assert close_to(video.first_frame(), RED)
    frames = list(video.frames(5))  # 2 s at 5 fps: a frame every 0.2 s
    assert len(frames) == 10
    assert all(frame.shape == (HEIGHT, WIDTH, 3) and frame.dtype == np.uint8 for frame in frames)
    assert [close_to(frame, RED) for frame in frames] == [True] * 5 + [False] * 5
    assert all(close_to(frame, BLUE) for frame in frames[5:])
    assert video.decoders_running == 0


def test_a_phone_videos_rotation_gives_its_displayed_size_and_frames(videos, tmp_path):
    video = opened(videos["rotated"], tmp_path)
    assert (video.width, video.height) == (HEIGHT, WIDTH)
    first = video.first_frame()
    assert first.shape == (WIDTH, HEIGHT, 3)
    # stored with red on top and blue below; turned a quarter, the colours sit left and right
    left, right = first[:, : HEIGHT // 2 - 4], first[:, HEIGHT // 2 + 4:]
    assert {close_to(left, RED), close_to(right, RED)} == {True, False}
    assert {close_to(left, BLUE), close_to(right, BLUE)} == {True, False}
    streamed = next(iter(video.frames(10)))
    assert streamed.shape == (WIDTH, HEIGHT, 3) and np.abs(streamed.astype(int) - first).mean() < 8
    video.close()


def test_a_video_past_the_limits_is_refused_naming_the_field_and_the_setting(videos, tmp_path):
    with pytest.raises(JobError) as too_long:
        opened(videos["colours"], tmp_path, VideoLimits(max_seconds=1.5, max_pixels=WIDTH * HEIGHT))
    assert too_long.value.code is ErrorCode.TOO_LARGE
    assert too_long.value.message == ("video_file is 2.0 s long, over the 1.5 s limit for a video (MAX_VIDEO_SECONDS); "
                                      "send a shorter video.")
    with pytest.raises(JobError) as too_big:
        opened(videos["colours"], tmp_path, VideoLimits(max_seconds=10.0, max_pixels=WIDTH * HEIGHT - 1))
    assert too_big.value.code is ErrorCode.TOO_LARGE
    assert too_big.value.message == ("video_file is 64x48 pixels a frame, over the 3,071 pixel limit for a video "
                                     "(MAX_VIDEO_PIXELS); send a smaller video.")


@pytest.mark.parametrize("kind, sentence", [
    ("garbage", "video_file is not a video that can be decoded; send an mp4, mov, webm or mkv."),
    ("still", "video_file is a still image, not a video; send a picture as image_file or image_url"),
    ("cover", "video_file is not a video that can be decoded; send an mp4, mov, webm or mkv."),
])
def test_what_is_not_a_video_is_unsupported_media(videos, tmp_path, kind, sentence):
    data = b"not a video at all " * 64 if kind == "garbage" else videos[kind]
    with pytest.raises(JobError) as refused:
        opened(data, tmp_path)
    assert refused.value.code is ErrorCode.UNSUPPORTED_MEDIA and refused.value.message.startswith(sentence)


def test_a_closed_iterator_or_a_stopped_job_ends_its_decoder(videos, tmp_path, monkeypatch):
    video = opened(videos["colours"], tmp_path)
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording(*args, **kwargs):
        process = real_popen(*args, **kwargs)
        started.append(process)
        return process

    monkeypatch.setattr(subprocess, "Popen", recording)
    control = JobControl()
    control.check()  # this thread's job control, as on a job's thread
    try:
        closed = video.frames(10)
        next(closed)
        assert video.decoders_running == 1
        closed.close()  # type: ignore[attr-defined]  # a generator
        assert video.decoders_running == 0 and started[0].returncode is not None

        stopped = video.frames(10)
        next(stopped)
        control.stop("the test stops the job")
        with pytest.raises(JobCancelled):
            next(stopped)
        assert video.decoders_running == 0 and started[1].returncode is not None

        JobControl().check()  # the next job's control
        left_open = iter(video.frames(10))
        next(left_open)
        video.close()  # the job's end, with an iterator still open
        assert video.decoders_running == 0 and started[2].returncode is not None
    finally:
        JobControl().check()  # no stopped control left current on this thread
