"""A live session in a real browser for a minute: the figures issue 21 asks for, printed.

    python -m scripts.benchmark_live_browser [--seconds 60] [--resolution 512*512] [--sessions 1] [--backend NAME]

Starts the always-on server (on 127.0.0.1; the backend chosen for the machine, or --backend's: it must
be one that can go live) and Debian's headless Chromium (/usr/bin/chromium) with a fake microphone
playing assets/speech.wav in a loop (with a second of silence after each pass), opens `GET /live`
once per session, and measures in the page as tests/test_live_browser.py does (tests/browser_page.py):
frames per second against the wall clock (on average and in the worst two seconds) and against the
stream's own timeline, the speech back (complete, concealed), the delay from speech sent to lips
shown and to speech played back, the lips against the speech played back (sync) and against the
speech each frame carries (on the stream's own timeline).

Needs the test extras (playwright, dlib) and the live extra (aiortc); run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window of each session")
    parser.add_argument("--resolution", default="", help='"W*H" (the backend\'s default when empty)')
    parser.add_argument("--sessions", type=int, default=1, help="sessions at once, one browser page each")
    parser.add_argument("--backend", default="", help="MODEL_BACKEND for the server (a backend that can go live)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from tests.browser_page import LivePage, analyse, browser_missing_reason, chromium_args, write_fake_microphone

    missing = browser_missing_reason()
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2
    import soundfile
    from playwright.sync_api import sync_playwright

    from tests.test_server import ServerProcess

    speech, rate = soundfile.read(ROOT / "assets" / "speech.wav", dtype="float32")
    with tempfile.TemporaryDirectory(prefix="live-benchmark-") as folder:
        work = Path(folder)
        microphone = write_fake_microphone(speech, rate, work / "speech.wav")
        (work / "server").mkdir()
        server = ServerProcess({"MODEL_BACKEND": args.backend} if args.backend else {}, work / "server")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                     args=chromium_args(microphone))
                pages = [LivePage(browser, server.url) for _ in range(args.sessions)]
                for page in pages:
                    page.start(portrait=ROOT / "assets" / "portrait.jpg", resolution=args.resolution)
                for page in pages:
                    page.wait_live()
                for page in pages:
                    page.begin_measuring()
                began = time.monotonic()
                while time.monotonic() - began < args.seconds:
                    time.sleep(1.0)
                    for page in pages:
                        if page.shown_error():
                            raise SystemExit(f"the page shows an error: {page.shown_error()}")
                recordings = [page.end_measuring() for page in pages]
                statuses = [page.stop() for page in pages]
                browser.close()
            sessions_left = server.health().get("live_sessions")
        finally:
            server.stop()
    figures = [analyse(recording) for recording in recordings]
    for number, (session, status) in enumerate(zip(figures, statuses, strict=True), 1):
        print(f"session {number} of {len(figures)} ({status})")
        for line in session.lines():
            print(f"  {line}")
    print(f"live sessions on the server after Stop: {sessions_left}")
    if args.json:
        args.json.write_text(json.dumps([_plain(session) for session in figures], indent=2))
    return 0


def _plain(figures) -> dict:
    import dataclasses

    return dataclasses.asdict(figures)


if __name__ == "__main__":
    sys.exit(main())
