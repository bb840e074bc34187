"""The live page in a real browser: Debian's headless Chromium opens `GET /live` on the always-on
server (127.0.0.1), its fake microphone playing assets/speech.wav in a loop, and talks to the lite
avatar over WebRTC. Measured in the page (tests/browser_page.py): frames per second of the stream's
own timeline, the speech coming back complete, and the mouth (found by dlib, not by lite) opening
with the loudness of the speech it carries; the delays (speech sent to lips shown, lips to speech
heard) are printed. Then the page's Stop ends the session on the server, the server ending a session
shows in the page, and the server's refusals show in the page as the contract words them.

The measured window is LIVE_BROWSER_SECONDS (8 s here, to keep the suite quick);
scripts/benchmark_live_browser.py runs the same measurement for 60 s and prints the figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
import soundfile

from tests.browser_page import (
    BEGIN_JS,
    END_JS,
    HOP_SECONDS,
    LOOPBACK_BOX,
    LOOPBACK_JS,
    MAX_LAG_SECONDS,
    MEASURE_JS,
    WINDOW_SECONDS,
    LivePage,
    analyse,
    browser_missing_reason,
    chromium_args,
    write_fake_microphone,
)
from tests.conftest import ASSETS
from tests.test_server import ServerProcess

_missing = browser_missing_reason() or (None if importlib.util.find_spec("aiortc") else
                                        "aiortc is not installed (pip install -e '.[live]')")
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

# The window must hold a few alignment windows past the longest lag searched.
SECONDS = max(float(os.environ.get("LIVE_BROWSER_SECONDS", "8")), WINDOW_SECONDS + MAX_LAG_SECONDS + 2 * HOP_SECONDS)
# Small frames keep the test cheap (lite, VP8 and the browser's decoder); the benchmark runs the default size.
RESOLUTION = "256*256"
API_KEY = "live-page-test-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    process = ServerProcess({"MODEL_BACKEND": "lite", "SERVER_API_KEY": API_KEY},
                            tmp_path_factory.mktemp("live-server"))
    yield process
    process.stop()
    assert process.leftovers() == [], "the server left files behind"


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    speech, rate = soundfile.read(ASSETS / "speech.wav", dtype="float32")
    microphone = write_fake_microphone(speech, rate, tmp_path_factory.mktemp("microphone") / "speech.wav")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=chromium_args(microphone))
        yield chromium
        chromium.close()


@pytest.fixture
def live_page(browser, server) -> Iterator[LivePage]:
    page = LivePage(browser, server.url)
    yield page
    page.close()


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def _live_sessions(server: ServerProcess) -> int:
    return server.health()["live_sessions"]


def test_the_avatar_says_what_the_microphone_speaks_at_25_fps(live_page, server):
    live_page.start(portrait=ASSETS / "portrait.jpg", api_key=API_KEY, resolution=RESOLUTION)
    session_id = live_page.wait_live()
    offer = live_page.page.evaluate("() => window.liveSession.pc.localDescription.sdp")
    recording = live_page.measure(SECONDS)
    if os.environ.get("LIVE_BROWSER_RECORDING"):  # kept for a closer look
        Path(os.environ["LIVE_BROWSER_RECORDING"]).write_text(json.dumps(recording))
    figures = analyse(recording)
    print("\n".join(figures.lines()))  # the figures, for `pytest -s`

    # Frames against the stream's own clock (the RTP timestamps of the frames decoded), not the wall's:
    # a busy machine may deliver late, but the frames of the 25 fps timeline must all arrive (a browser
    # starved of CPU drops some late, 19 of 200 at load 9: those count as arrived).
    assert 24.0 <= figures.fps_media <= 26.0, figures
    assert figures.frames_shown >= 50, figures  # enough frames for the figures below to mean something
    # The speech comes back complete: the samples played from received packets, less the jitter
    # buffer's stretching, cover the audio's own timeline (measured 0.995-1.001; a sender that stamps
    # both 20 ms Opus packets of a 40 ms piece alike loses half: 0.5), little had to be made up, and it
    # is speech (the file is louder than -40 dBFS for 62 % of each loop).
    assert 0.95 <= figures.audio_complete <= 1.05, figures
    assert figures.audio_concealed <= 0.1, figures
    assert figures.sent_speaking >= 0.5 and figures.back_speaking >= 0.5, figures
    # The lips move with the speech each frame carries: the mouth's darkness (in dlib's mouth box, as
    # tests/test_lite_faces.py measures an open mouth) against the loudness of the speech back, both
    # placed on the stream's own timeline (RTP timestamps). Measured 0.78-0.85 at 256*256 and 512*512
    # on a 2-core machine at load 6-10; the same mouth series moved round by 30-70 % of the window (its
    # values and dynamics kept, its timing unrelated to the speech) 0.03-0.33 over the same lag search.
    assert figures.carried.correlation >= 0.6, figures
    # The control: the mouth series moved round by 30, 50 and 70 % of the window keeps its values and
    # dynamics but not its timing, and the lag search still picks its best lag, so one of them may land
    # on a stretch of like rhythm (0.47 once, at load 3 with the suite beside it): each stays below the
    # true alignment, and their median below 0.45.
    controls = sorted(analyse(_mouth_moved(recording, part)).carried.correlation for part in (0.3, 0.5, 0.7))
    assert controls[-1] < figures.carried.correlation - 0.1, (controls, figures)
    assert controls[1] < 0.45, controls
    # As seen and heard (figures.sync: playout times) and from speech sent to lips shown (figures.mouth)
    # the figures are printed, not asserted: on a loaded machine the session falls behind and those
    # delays drift within the window (speech sent to lips 0.3 to 1.5 s at load 9), and the lips were
    # shown up to 0.65 s ahead of their speech; scripts/benchmark_live_browser.py reports them.

    # the page's own figures for the person watching
    shown = live_page.page.inner_text("#stats")
    assert " fps, 256×256, " in shown and "frames received" in shown and " s played, " in shown, shown
    assert "round trip" in shown and session_id in shown, shown

    status = live_page.stop()
    assert status == "Session ended.", status
    assert _live_sessions(server) == 0
    gone = requests.delete(f"{server.url}/sessions/{session_id}", headers=_headers(), timeout=10)
    assert gone.status_code == 404, gone.text
    # The offer's ICE credentials never reach the server's log.
    password = next(line.split(":", 1)[1] for line in offer.splitlines() if line.startswith("a=ice-pwd:"))
    assert password not in server.log()


def test_the_measurement_agrees_with_the_browsers_own_call(browser, server):
    """The measuring itself, on a call whose picture and sound are known to be together: the browser's
    own sender and receiver in one page (tests/browser_page.py, LOOPBACK_JS), a dark square shown
    while a tone sounds. A page of the server gives it the live page's secure origin (127.0.0.1)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{server.url}/health")
        page.evaluate(LOOPBACK_JS)
        page.wait_for_function("() => window.liveSession.video.readyState >= 2", timeout=30_000)
        page.evaluate(MEASURE_JS)
        page.evaluate(BEGIN_JS, list(LOOPBACK_BOX))
        page.wait_for_timeout(SECONDS * 1000)
        figures = analyse(page.evaluate(END_JS))
    finally:
        context.close()
    print("\n".join(figures.lines()))
    # measured: the square follows the tone played back at 0.97, shown 45-50 ms before it; the tone is
    # played back 0-30 ms after it was sent, the square shown at once (0, the lag search's edge). On the
    # stream's own timeline (RTP timestamps) the two are together whatever the load (0.00-0.02 s); as
    # played out, the browser's own delay between them grows with the machine's load (0.22 s at load 2
    # with the suite beside it), so that one is printed, not bounded. Its correlation drops under load
    # too (0.79 at load 2 with the suite beside it, 0.97 quiet), as the playout jitters: the load-proof
    # bound is the RTP timeline's, and the played-out one only has to show that the two still go together.
    assert figures.carried.correlation >= 0.9 and abs(figures.carried.delay) <= 0.08, figures
    assert figures.sync.correlation >= 0.6, figures
    assert figures.speech.correlation >= 0.9 and figures.speech.delay <= 0.15, figures
    assert figures.mouth.correlation >= 0.8 and figures.mouth.delay <= 0.15, figures


def _mouth_moved(recording: dict, part: float) -> dict:
    """The recording with its mouth series moved round by `part` of the window: the same values and
    dynamics, no longer with the speech they were drawn for."""
    rows = recording["frames"]
    darkness = [row[5] for row in rows]
    cut = round(len(darkness) * part)
    darkness = darkness[cut:] + darkness[:cut]
    return {**recording, "frames": [[*row[:5], dark, *row[6:]] for row, dark in zip(rows, darkness, strict=True)]}


def test_the_page_shows_the_servers_refusals(live_page, server, tmp_path):
    live_page.start(portrait=ASSETS / "portrait.jpg", api_key="not-the-key")
    error = live_page.error()
    assert "(HTTP 401)" in error and "Authorization: Bearer" in error, error
    assert live_page.status() == "Not running."

    faceless = tmp_path / "wall.png"
    cv2.imwrite(str(faceless), np.full((256, 256, 3), 128, np.uint8))
    live_page.start(portrait=faceless, api_key=API_KEY)
    error = live_page.wait_error_change(error)
    assert error.startswith("NO_FACE: ") and "(HTTP 422)" in error, error

    live_page.start(avatar_id="nobody-here", api_key=API_KEY)
    error = live_page.wait_error_change(error)
    assert error.startswith("INVALID_INPUT: ") and "avatar_id" in error, error
    assert _live_sessions(server) == 0


def test_a_speech_file_instead_of_the_microphone_and_the_server_ending_the_session(live_page, server):
    live_page.start(portrait=ASSETS / "portrait.jpg", api_key=API_KEY, resolution=RESOLUTION,
                    speech=ASSETS / "speech.wav")
    session_id = live_page.wait_live()
    # The file is what the page sends: the sent track's source (WebAudio, not the fake microphone)
    # carries speech once the call is connected (assets/speech.wav is loud from its first 100 ms).
    live_page.page.wait_for_function("""async () => {
        const report = await window.liveSession.pc.getStats();
        let energy = 0;
        report.forEach((entry) => {
            if (entry.type === "media-source" && entry.kind === "audio") energy = entry.totalAudioEnergy || 0;
        });
        return energy > 0.01;
    }""", polling=200, timeout=30_000)
    sent = live_page.page.evaluate("() => window.liveSession.pc.getSenders().find((s) => s.track).track.label")
    microphone = live_page.page.evaluate("""async () => {
        const stream = await navigator.mediaDevices.getUserMedia({audio: true});
        const [track] = stream.getAudioTracks();
        track.stop();
        return track.label;
    }""")
    assert sent != microphone, f"the page sends the microphone ({microphone}), not the file"
    ended = requests.delete(f"{server.url}/sessions/{session_id}", headers=_headers(), timeout=10)
    assert ended.ok, ended.text
    error = live_page.error()
    assert error.startswith("The session ended: the server closed it"), error
    live_page.page.wait_for_function("() => !window.liveSession")
    assert _live_sessions(server) == 0


def test_the_page_asks_for_one_portrait(live_page):
    """Judged in the page, before anything is sent."""
    live_page.start(api_key=API_KEY)
    first = live_page.error()
    assert first == "Pick a portrait file, or type a preset's avatar_id or an image URL.", first
    live_page.start(portrait=ASSETS / "portrait.jpg", avatar_id="astronaut")
    error = live_page.wait_error_change(first)
    assert error == "Choose one portrait: you gave a portrait file and a preset; clear the others.", error
