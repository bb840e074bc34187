"""lite's live generator through its real interface: speech pushed in pieces, frames pulled one by one,
measured on the rendered frames where the face is."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import soundfile

from model.base import GenerationOptions
from model.lite import mesh_indices as mesh
from model.lite.backend import LiteBackend
from model.lite.declaration import DECLARATION
from model.lite.landmarks import FaceLandmarks
from model.lite.motion import BlinkClock, HeadMotion, blink_track, head_track, seeded_generators
from model.lite.speech_features import PRIOR_LOUD_DB, LoudnessReference, analyse
from model.live import LiveGenerator
from tests.conftest import ASSETS

RATE = 16_000
AREA = 256 * 256


@pytest.fixture(scope="module")
def backend() -> LiteBackend:
    return LiteBackend()


@pytest.fixture(scope="module")
def prepared(backend):
    image = cv2.cvtColor(cv2.imread(str(ASSETS / "portrait.jpg")), cv2.COLOR_BGR2RGB)
    return backend.prepare_portrait(image, AREA)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    assert rate == RATE
    return samples


def at_level(samples: np.ndarray, dbfs: float) -> np.ndarray:
    """`samples` scaled so that their RMS is `dbfs`."""
    rms_db = 10 * np.log10(np.mean(samples.astype(np.float64) ** 2))
    return (samples * 10 ** ((dbfs - rms_db) / 20)).astype(np.float32)


def opened(backend, prepared, seed: int = 3) -> LiveGenerator:
    return backend.open_live(prepared, GenerationOptions(seed=seed))


def run(generator: LiveGenerator, frames: int, speak: bool = True) -> list:
    return [generator.next_frame(speak) for _ in range(frames)]


def images(frames) -> np.ndarray:
    return np.stack([frame.image for frame in frames])


def lip_luma(prepared, frames) -> np.ndarray:
    """Mean brightness of the closed lips' box per frame: the open mouth shows its dark inside."""
    x0, y0, x1, y1 = FaceLandmarks(prepared.features.points, 1.0).mouth_box()
    box = images(frames)[:, y0:y1, x0:x1].astype(np.float32)
    return (box @ np.array([0.299, 0.587, 0.114], np.float32)).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def closed_lips(backend, prepared) -> float:
    """The lips' brightness with the mouth shut (idle frames, head swaying)."""
    lips = lip_luma(prepared, run(opened(backend, prepared), 50, speak=False))
    assert np.ptp(lips) < 2.0, "head sway alone hardly changes the lips' box"
    return float(lips.mean())


def mouth_opening(prepared, frames, closed: float) -> np.ndarray:
    return closed - lip_luma(prepared, frames)


def frame_levels(frames) -> np.ndarray:
    """The loudness (dBFS, floored at -60) of the speech each frame carries."""
    speech = np.stack([frame.speech for frame in frames]).astype(np.float64)
    return np.maximum(10 * np.log10((speech**2).mean(axis=1) + 1e-12), -60.0)


def test_lite_declares_it_can_go_live_and_opens_a_generator(backend, prepared):
    assert DECLARATION.live.can_go_live and DECLARATION.live.max_sessions >= 1
    generator = opened(backend, prepared)
    assert (generator.width, generator.height) == (prepared.width, prepared.height)
    assert generator.fps == backend.fps == 25.0 and generator.samples_per_frame == 640
    assert 0.0 < generator.look_ahead_seconds <= 0.12
    frame = generator.next_frame()
    assert frame.image.shape == (prepared.height, prepared.width, 3) and frame.image.dtype == np.uint8
    assert frame.speech.shape == (640,) and frame.speech.dtype == np.float32 and not frame.speech.any()
    assert not frame.speaking


def test_speech_out_is_speech_in_sample_exact(backend, prepared, speech):
    samples = speech[: int(1.3 * RATE) + 17]
    generator = opened(backend, prepared)
    cuts = np.cumsum(np.random.default_rng(0).integers(1, 900, 200))
    pieces = np.split(samples, cuts[cuts < len(samples)])
    out, pushed = [], 0
    for i, piece in enumerate(pieces):
        generator.push_speech(piece)
        pushed += len(piece)
        if i % 3 == 0:
            queued_before = generator.queued_seconds
            frame = generator.next_frame()
            out.append(frame)
            assert frame.speaking == (queued_before > 0)
        shown = 640 * len(out)
        assert generator.queued_seconds == max(0, pushed - shown) / RATE
    while generator.queued_seconds > 0:
        out.append(generator.next_frame())
    carried = np.concatenate([frame.speech for frame in out])
    shown_speech = carried[: len(samples)]
    assert np.array_equal(shown_speech, samples)
    assert not carried[len(samples):].any(), "past the speech's end frames carry zeros"


def test_frames_do_not_depend_on_how_the_speech_was_cut(backend, prepared, speech):
    samples = speech[: 2 * RATE]
    frames = 2 * 25 + 3

    def cut_into(step: int) -> tuple[np.ndarray, np.ndarray]:
        generator = opened(backend, prepared)
        for start in range(0, len(samples), step):
            generator.push_speech(samples[start : start + step])
        out = run(generator, frames)
        return images(out), np.concatenate([frame.speech for frame in out])

    whole_images, whole_speech = cut_into(len(samples))
    for step in (160, 592):  # 10 ms and 37 ms
        cut_images, cut_speech = cut_into(step)
        assert np.array_equal(cut_images, whole_images) and np.array_equal(cut_speech, whole_speech)

    # speech arriving just in time: a frame that runs the queue dry carries zeros where the speech had
    # not arrived yet, and one rendered before its look-ahead arrived reads zeros there; but what a
    # frame read ahead stays out of the state: every frame that had its look-ahead queued is the frame
    # the speech it was shown with, queued at once, gives
    generator = opened(backend, prepared)
    needed = 640 + round(generator.look_ahead_seconds * RATE)
    pushed, late, had_look_ahead = 0, [], []
    for i in range(frames):
        # one piece per frame, now and then too short, so that the queue runs dry and refills
        target = min(len(samples), 640 * i + (200 if i % 4 == 1 else 1600))
        if target > pushed:
            generator.push_speech(samples[pushed:target])
            pushed = target
        had_look_ahead.append(generator.queued_seconds * RATE >= needed)
        late.append(generator.next_frame())
    assert 0 < sum(had_look_ahead) < frames - 10, "the schedule starves some frames and not others"
    shown = np.concatenate([frame.speech for frame in late])
    assert np.array_equal(shown[shown != 0], samples[samples != 0]), "all the speech, in order"
    generator = opened(backend, prepared)
    generator.push_speech(shown)
    at_once = run(generator, frames)
    for i, frame in enumerate(late):
        if had_look_ahead[i]:
            assert np.array_equal(frame.image, at_once[i].image), f"frame {i}"


def test_no_frame_reads_further_ahead_than_it_declares(backend, prepared, speech):
    """Changing the speech from `look_ahead_seconds` past a frame's end leaves it and every frame
    before it exactly as they were; changing it a hop earlier changes the frame (it does read that far)."""
    samples = np.concatenate([np.zeros(RATE // 2, np.float32), speech[: int(1.5 * RATE)]])
    frames = len(samples) // 640
    ahead = round(opened(backend, prepared).look_ahead_seconds * RATE)
    burst = np.random.default_rng(1).uniform(-0.5, 0.5, len(samples)).astype(np.float32)

    def render(changed_from: int) -> np.ndarray:
        generator = opened(backend, prepared)
        generator.push_speech(np.concatenate([samples[:changed_from], burst[changed_from:]]))
        return images(run(generator, frames))

    reference = render(len(samples))
    for frame in (5, 11, 20, 33, 47):  # in the leading silence, at the speech's onset, within it
        end = 640 * (frame + 1)
        beyond = render(end + ahead)
        assert np.array_equal(beyond[: frame + 1], reference[: frame + 1]), f"frame {frame} read past its look-ahead"
    within = render(640 * (5 + 1) + ahead - 160)
    assert np.array_equal(within[:5], reference[:5])
    assert not np.array_equal(within[5], reference[5]), "the last 10 ms of the look-ahead move the mouth"


def test_mouth_opening_follows_the_speech_loudness(backend, prepared, speech, closed_lips):
    generator = opened(backend, prepared)
    generator.push_speech(speech)
    frames = run(generator, len(speech) // 640)
    opening = mouth_opening(prepared, frames, closed_lips)
    correlation = np.corrcoef(opening, frame_levels(frames))[0, 1]
    assert correlation > 0.7, correlation
    assert opening.max() > 12.0, "loud syllables show the mouth's dark inside"


@pytest.mark.parametrize("dbfs", [-30.0, -15.0])
def test_the_first_syllable_opens_the_mouth_at_common_speech_levels(backend, prepared, speech, closed_lips, dbfs):
    generator = opened(backend, prepared)
    generator.push_speech(at_level(speech[: RATE // 2], dbfs))
    opening = mouth_opening(prepared, run(generator, 12), closed_lips)
    assert opening.max() > 8.0, opening.round(1)


def test_the_loudness_reference_adapts_to_a_quiet_talker(backend, prepared, speech, closed_lips):
    """A talker at -40 dBFS opens the mouth little at first, and about as wide as a -22 dBFS talker
    once a few seconds of speech have been heard."""
    openings = {}
    for dbfs in (-40.0, -22.0):
        generator = opened(backend, prepared)
        generator.push_speech(at_level(speech, dbfs))
        openings[dbfs] = mouth_opening(prepared, run(generator, len(speech) // 640), closed_lips)
    quiet, normal = openings[-40.0], openings[-22.0]
    assert quiet[:25].mean() < 0.5 * normal[:25].mean()
    assert quiet[-75:].mean() > 0.7 * normal[-75:].mean()


def test_the_loudness_reference_learns_the_talkers_loud_level(speech):
    """Fed hop by hop, the reference moves from the prior to within a few dB of the loud level
    (the job's: the 95th percentile of the whole recording) of talkers from -40 to -12 dBFS."""
    for dbfs in (-40.0, -22.0, -12.0):
        levels, _ = analyse(at_level(speech, dbfs))
        reference = LoudnessReference()
        assert reference.loud == pytest.approx(PRIOR_LOUD_DB, abs=0.5)
        for level in np.tile(levels, 2):
            reference.hear(float(level))
        assert abs(reference.loud - np.percentile(levels, 95)) < 2.0, (dbfs, reference.loud)
    reference = LoudnessReference()
    for level in np.full(3000, -56.0):  # a minute of hiss below the absolute gate
        reference.hear(float(level))
    assert reference.loud == pytest.approx(PRIOR_LOUD_DB, abs=0.5)


@pytest.mark.parametrize("noise_dbfs", [-70.0, -58.0])
def test_room_noise_never_opens_the_mouth(backend, prepared, noise_dbfs):
    noise = np.random.default_rng(2).normal(0.0, 10 ** (noise_dbfs / 20), 2 * RATE).astype(np.float32)
    generator = opened(backend, prepared)
    generator.push_speech(noise)
    noisy = images(run(generator, 50))
    silent = images(run(opened(backend, prepared), 50, speak=False))
    assert np.array_equal(noisy, silent)


def test_silence_closes_the_mouth_and_idle_motion_goes_on(backend, prepared, speech, closed_lips):
    generator = opened(backend, prepared)
    generator.push_speech(speech[: 2 * RATE])
    frames = run(generator, 50 + 40)
    opening = mouth_opening(prepared, frames, closed_lips)
    assert opening[:50].max() > 12.0
    # shut within half a second of the speech's end, and shut from then on
    assert np.abs(opening[62:]).max() < 2.0
    still = images(frames[62:]).astype(np.int16)
    assert np.abs(still[-1] - still[0]).mean() > 0.3, "the head keeps swaying in silence"


def test_blinks_go_on_in_a_long_silence(backend, prepared):
    seed, frames = 11, 12 * 25
    generator = opened(backend, prepared, seed)
    shown = images(run(generator, frames, speak=False))
    points = prepared.features.points
    inside_eyes = np.zeros((prepared.height, prepared.width), np.uint8)
    for upper, lower in ((mesh.EYE_A_UPPER, mesh.EYE_A_LOWER), (mesh.EYE_B_UPPER, mesh.EYE_B_LOWER)):
        cv2.fillPoly(inside_eyes, [np.round(np.concatenate([points[upper], points[lower][::-1]])).astype(np.int32)], 1)
    eyes = shown[:, inside_eyes == 1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    # a blink lasts a few frames, the sway takes seconds: compare each frame with those 4 frames away
    padded = np.concatenate([eyes[:4], eyes, eyes[-4:]])
    change = np.minimum(np.abs(eyes - padded[:-8]).mean(axis=1), np.abs(eyes - padded[8:]).mean(axis=1))
    blinking = change > 3 * np.median(change) + 10.0
    starts = np.flatnonzero(blinking[1:] & ~blinking[:-1]) + 1
    assert len(starts) >= 2, "12 s of silence hold at least two blinks"
    # the seed places them where blink_track does for that seed: every frame it closes the eyes in
    # shows them closed, and no frame it leaves open does
    closure = blink_track(frames, 25.0, seeded_generators(seed)[0])
    assert blinking[closure > 0.9].all() and not blinking[closure < 0.2].any()


def test_motion_frame_by_frame_is_the_recorded_motion(prepared):
    """Blinks and sway drawn frame by frame, forever, match the finished-recording tracks for a seed."""
    frames, fps, face = 2000, 25.0, prepared.features.head.face_height
    blink_rng, head_rng = seeded_generators(9)
    clock = BlinkClock(fps, blink_rng)
    assert np.allclose([clock.closure(i) for i in range(frames)],
                       blink_track(frames, fps, seeded_generators(9)[0]), atol=1e-6)
    opening = np.clip(np.sin(np.arange(frames) / 7.0), 0, 1).astype(np.float32)
    head = HeadMotion(fps, head_rng, face)
    live = np.array([head.pose(i, float(opening[i])) for i in range(frames)])
    track = head_track(frames, fps, seeded_generators(9)[1], face, opening)
    assert np.allclose(live, np.stack([track.shift_x, track.shift_y, track.roll], axis=1), atol=1e-4)


def test_interrupt_drops_the_queue_and_closes_the_mouth_at_once(backend, prepared, speech, closed_lips):
    generator = opened(backend, prepared)
    generator.push_speech(speech)
    before = run(generator, 8)
    while mouth_opening(prepared, before[-1:], closed_lips)[0] < 12.0:
        before.append(generator.next_frame())
        assert len(before) < 100, "the speech opens the mouth wide somewhere in its first four seconds"
    generator.interrupt()
    assert generator.queued_seconds == 0.0
    after = run(generator, 8)
    assert not after[0].speaking and not after[0].speech.any()
    opening = mouth_opening(prepared, [before[-1], *after], closed_lips)
    assert opening[1] < opening[0] - 3.0, opening.round(1)
    assert (np.diff(opening[:5]) < 0).all() and abs(opening[6]) < 2.0, opening.round(1)
    # speech pushed afterwards opens it again
    generator.push_speech(speech)
    assert mouth_opening(prepared, run(generator, 60), closed_lips).max() > 12.0


def test_an_idle_frame_leaves_the_queue(backend, prepared, speech, closed_lips):
    generator = opened(backend, prepared)
    generator.push_speech(speech[:RATE])
    idle = run(generator, 10, speak=False)
    assert generator.queued_seconds == 1.0
    assert all(not frame.speaking and not frame.speech.any() for frame in idle)
    assert np.abs(mouth_opening(prepared, idle, closed_lips)).max() < 2.0
    spoken = run(generator, 25)
    assert np.array_equal(np.concatenate([frame.speech for frame in spoken]), speech[:RATE])
    assert generator.queued_seconds == 0.0


@pytest.mark.parametrize("bad", [np.zeros((2, 320), np.float32), np.zeros(320, np.int16),
                                 np.array([0.1, np.nan], np.float32)])
def test_bad_speech_is_refused_with_the_fix(backend, prepared, bad):
    generator = opened(backend, prepared)
    with pytest.raises(ValueError, match="speech"):
        generator.push_speech(bad)
    assert generator.queued_seconds == 0.0
