"""Drives the `GET /live` page in Debian's headless Chromium and measures the session inside the page.

Chromium's fake microphone plays a WAV file (looped); the page sends it to the server and shows the
avatar it gets back. What is measured, all in the page and on one clock (`performance.now()`):

- the speech as sent (the microphone track after the browser's own processing), as 10 ms loudness
  bins from an AudioWorklet, and as played back (the avatar's audio track), each RTP packet's level
  and playout time (`getSynchronizationSources`);
- every video frame shown (`requestVideoFrameCallback`): when, its RTP timestamp, and how much of the
  mouth box is dark (the open mouth's inside, as tests/test_lite_faces.py measures it);
- WebRTC's own counters (`getStats`) at the start and end of the measured window, and each second.

On a browser-to-browser loopback in one page (Chromium's own sender, a tone and a square switched
together), these clocks agreed within 10-20 ms: the worklet's sent speech 10 ms after the tone, the
played-back packets 5 ms after, the square shown 15 ms before.

The mouth box comes from the first received frame through dlib's 68-point landmark model, which shares
nothing with the backend that drew the face. `analyse` turns the recording into `LiveFigures`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
#: luma below this is the open mouth's inside (the threshold tests/test_lite_faces.py uses)
DARK_LUMA = 90
#: the loudness envelope and the mouth series are compared on this grid
GRID_SECONDS = 0.01
#: louder than this (-40 dBFS RMS) is speech; assets/speech.wav speaks at about -20 dBFS
SPEAKING_RMS = 0.01
#: lags searched for the speech → lips and speech → speech-back delays
MAX_LAG_SECONDS = 2.0
#: lags searched both ways between the speech back and the lips
MAX_SYNC_SECONDS = 1.0
#: the series are aligned window by window (the delay may drift), each this long, one starting every HOP_SECONDS
WINDOW_SECONDS = 3.0
HOP_SECONDS = 1.0


def browser_missing_reason() -> str | None:
    """Why the real-browser measurement cannot run here, or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (pip install -e '.[test]')"
    return None


def write_fake_microphone(speech: np.ndarray, rate: int, path: Path, silence_seconds: float = 1.0) -> Path:
    """A WAV Chromium's fake capture device plays in a loop: 16-bit PCM mono, the speech then a silence
    (so every loop has a pause in which the mouth must close)."""
    import soundfile

    padded = np.concatenate([speech.astype(np.float32), np.zeros(round(silence_seconds * rate), np.float32)])
    soundfile.write(path, padded, rate, subtype="PCM_16")
    return path


def chromium_args(microphone_wav: Path) -> list[str]:
    return [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}",
        "--autoplay-policy=no-user-gesture-required",
        # the server's only address may be loopback; Chromium leaves loopback out of ICE otherwise
        "--allow-loopback-in-peer-connection",
        "--no-sandbox",
        "--disable-gpu",
        "--mute-audio",
    ]


# Installed into the page (page.evaluate) once a session has started: taps the sent speech, follows
# the speech played back, watches every frame shown, and snapshots getStats. Returns nothing; window.liveMeasure
# holds the recording.
MEASURE_JS = r"""
async () => {
  const live = window.liveSession;
  if (!live) throw new Error("no session is running: press Start first");
  const workletSource = `
    class Loudness extends AudioWorkletProcessor {
      constructor() { super(); this.sum = 0; this.count = 0; this.start = 0; }
      process(inputs) {
        const channel = inputs[0] && inputs[0][0];
        if (!channel) return true;
        if (this.count === 0) this.start = currentTime;
        for (let i = 0; i < channel.length; i++) this.sum += channel[i] * channel[i];
        this.count += channel.length;
        if (this.count >= sampleRate * 0.01) {
          this.port.postMessage([this.start, Math.sqrt(this.sum / this.count), this.count]);
          this.sum = 0; this.count = 0;
        }
        return true;
      }
    }
    registerProcessor("loudness", Loudness);`;
  const context = new AudioContext();
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([workletSource], {type: "text/javascript"})));
  await context.resume();
  const measure = {context, sent: [], received: [], frames: [], box: null, clock: null, stats: [],
                   sampleRate: context.sampleRate};
  // context time -> performance.now(): the output timestamp pairs them (refreshed, it follows drift)
  const syncClock = () => {
    const stamp = context.getOutputTimestamp();
    if (stamp.performanceTime > 0) measure.clock = [stamp.contextTime, stamp.performanceTime];
  };
  measure.clockTimer = setInterval(syncClock, 250);
  const toPage = (contextTime) => measure.clock
    ? measure.clock[1] + 1000 * (contextTime - measure.clock[0]) : null;
  const tap = (track, into) => {
    const source = context.createMediaStreamSource(new MediaStream([track]));
    const node = new AudioWorkletNode(context, "loudness");
    node.port.onmessage = (event) => {
      const [start, rms, count] = event.data;
      const at = toPage(start);
      if (at !== null) into.push([at, rms, count]);
    };
    source.connect(node);
    // a worklet only runs while connected towards the destination; a zero gain keeps it silent
    const mute = context.createGain();
    mute.gain.value = 0;
    node.connect(mute).connect(context.destination);
    return source;
  };
  const sender = live.pc.getSenders().find((s) => s.track && s.track.kind === "audio");
  const audioReceiver = live.pc.getReceivers().find((r) => r.track && r.track.kind === "audio");
  const videoReceiver = live.pc.getReceivers().find((r) => r.track && r.track.kind === "video");
  if (!sender || !audioReceiver || !videoReceiver) throw new Error("the session lacks its audio sender or a receiver");
  measure.taps = [tap(sender.track, measure.sent)];
  // The speech back, as played out: each RTP packet's level (the sender's audio-level header) and
  // when the browser delivered it to the track. A WebAudio tap would add its own buffering: on a
  // browser-to-browser loopback it read 60 ms later than this.
  measure.playoutTimer = setInterval(() => {
    const [source] = audioReceiver.getSynchronizationSources();
    if (source && source.audioLevel !== undefined && source.rtpTimestamp !== measure.lastRtp) {
      measure.lastRtp = source.rtpTimestamp;
      measure.received.push([source.timestamp - performance.timeOrigin, source.audioLevel, source.rtpTimestamp]);
    }
  }, 5);

  const video = live.video;
  const canvas = document.createElement("canvas");
  const draw = canvas.getContext("2d", {willReadFrequently: true});
  const darkLuma = %(dark_luma)d;
  const onFrame = (now, meta) => {
    let dark = null, luma = null;
    const box = measure.box;
    if (box) {
      if (canvas.width !== box[2] || canvas.height !== box[3]) { canvas.width = box[2]; canvas.height = box[3]; }
      draw.drawImage(video, box[0], box[1], box[2], box[3], 0, 0, box[2], box[3]);
      const pixels = draw.getImageData(0, 0, box[2], box[3]).data;
      let darkCount = 0, lumaSum = 0;
      for (let i = 0; i < pixels.length; i += 4) {
        const y = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
        lumaSum += y;
        if (y < darkLuma) darkCount++;
      }
      dark = darkCount / (pixels.length / 4);
      luma = lumaSum / (pixels.length / 4);
    }
    measure.frames.push([meta.expectedDisplayTime, meta.rtpTimestamp ?? null, meta.presentedFrames,
                         meta.width, meta.height, dark, luma, meta.receiveTime ?? null, now]);
    if (!measure.stopped) video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);

  measure.snapshot = async () => {
    const report = await live.pc.getStats();
    const picked = {at: performance.now()};
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp") picked[entry.kind] = entry;
      if (entry.type === "outbound-rtp" && entry.kind === "audio") picked.sent = entry;
      if (entry.type === "candidate-pair" && entry.nominated && entry.state === "succeeded") picked.pair = entry;
    });
    // the RTP timestamp of the speech playing now: the audio's own timeline
    const [source] = audioReceiver.getSynchronizationSources();
    picked.audioRtp = source ? source.rtpTimestamp : null;
    // ...and of the video frame delivered last, read together with framesDecoded
    const [frame] = videoReceiver.getSynchronizationSources();
    picked.videoRtp = frame ? frame.rtpTimestamp : null;
    return picked;
  };
  measure.grab = () => {
    const full = document.createElement("canvas");
    full.width = video.videoWidth; full.height = video.videoHeight;
    full.getContext("2d").drawImage(video, 0, 0);
    return full.toDataURL("image/png");
  };
  window.liveMeasure = measure;
}
""".replace("%(dark_luma)d", str(DARK_LUMA))

# A browser-to-browser call inside one page, for checking the measurement itself: a tone and a dark
# square switched on and off together at random, sent from one peer connection to another (the
# browser's own sender and receiver, whose synchronization is right), exposed as window.liveSession
# the way the live page exposes its session. The square sits at LOOPBACK_BOX.
LOOPBACK_BOX = (96, 96, 64, 64)
LOOPBACK_JS = """
async () => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 256;
  const paint = canvas.getContext("2d");
  const context = new AudioContext();
  const tone = context.createOscillator();
  tone.frequency.value = 300;
  const gain = context.createGain();
  gain.gain.value = 0;
  const destination = context.createMediaStreamDestination();
  tone.connect(gain).connect(destination);
  tone.start();
  let on = false;
  const flip = () => {
    on = !on;
    gain.gain.setValueAtTime(on ? 0.5 : 0, context.currentTime);
    setTimeout(flip, 150 + Math.random() * 500);
  };
  flip();
  const draw = () => {
    paint.fillStyle = "#ddd";
    paint.fillRect(0, 0, 256, 256);
    if (on) { paint.fillStyle = "#000"; paint.fillRect(96, 96, 64, 64); }
    requestAnimationFrame(draw);
  };
  draw();
  const sending = new RTCPeerConnection(), receiving = new RTCPeerConnection();
  sending.onicecandidate = (e) => e.candidate && receiving.addIceCandidate(e.candidate);
  receiving.onicecandidate = (e) => e.candidate && sending.addIceCandidate(e.candidate);
  const stream = new MediaStream([destination.stream.getAudioTracks()[0],
                                  canvas.captureStream(25).getVideoTracks()[0]]);
  stream.getTracks().forEach((track) => sending.addTrack(track, stream));
  const video = document.createElement("video");
  video.autoplay = video.muted = video.playsInline = true;
  document.body.append(video);
  const remote = new MediaStream();
  receiving.ontrack = (e) => { remote.addTrack(e.track); video.srcObject = remote; };
  await sending.setLocalDescription(await sending.createOffer());
  await receiving.setRemoteDescription(sending.localDescription);
  await receiving.setLocalDescription(await receiving.createAnswer());
  await sending.setRemoteDescription(receiving.localDescription);
  const pc = {getSenders: () => sending.getSenders(), getReceivers: () => receiving.getReceivers(),
              getStats: () => receiving.getStats()};
  Object.defineProperty(window, "liveSession", {get: () => ({id: "loopback", pc, video})});
}
"""

BEGIN_JS = """
async (box) => {
  const m = window.liveMeasure;
  m.box = box;
  m.sent.length = 0; m.received.length = 0; m.frames.length = 0;
  m.stats = [await m.snapshot()];
  m.begun = performance.now();
  m.perSecond = [];
  m.pollTimer = setInterval(async () => {
    const picked = await m.snapshot();
    if (picked.video) m.perSecond.push([picked.at, picked.video.framesDecoded || 0]);
  }, 1000);
}
"""

END_JS = """
async () => {
  const m = window.liveMeasure;
  m.stats.push(await m.snapshot());
  m.stopped = true;
  clearInterval(m.clockTimer);
  clearInterval(m.pollTimer);
  clearInterval(m.playoutTimer);
  m.taps.forEach((source) => source.disconnect());
  await m.context.close();
  return {sent: m.sent, received: m.received, frames: m.frames, stats: m.stats, perSecond: m.perSecond, begun: m.begun,
          ended: performance.now(), sampleRate: m.sampleRate};
}
"""


def mouth_box(png: bytes, margin: float = 0.35) -> tuple[int, int, int, int]:
    """The mouth (x, y, width, height) in a frame, from dlib's face detector and 68-point landmarks,
    widened by `margin` of its size each way so that an open jaw stays inside it."""
    import cv2
    import dlib

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise AssertionError("the frame grabbed from the page is not an image")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    faces, scores, _ = dlib.get_frontal_face_detector().run(rgb, 1, 0.0)
    if not faces:
        raise AssertionError("dlib found no face in the first received frame")
    face = faces[int(np.argmax(scores))]
    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.submodule_search_locations, "face_recognition_models is not installed"
    model = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    shape = dlib.shape_predictor(str(model))(rgb, face)
    lips = np.array([(shape.part(i).x, shape.part(i).y) for i in range(48, 68)], np.float64)
    low, high = lips.min(axis=0), lips.max(axis=0)
    size = high - low
    low = np.maximum(low - margin * size, 0)
    high = np.minimum(high + margin * size * np.array([1.0, 2.0]), [image.shape[1] - 1, image.shape[0] - 1])
    return int(low[0]), int(low[1]), int(high[0] - low[0]) + 1, int(high[1] - low[1]) + 1


def decode_data_url(url: str) -> bytes:
    import base64

    return base64.b64decode(url.split(",", 1)[1])


@dataclasses.dataclass(frozen=True)
class Alignment:
    """How well a follower series repeats a reference series later, window by window (the delay may
    drift during a session, on a busy machine most of all)."""

    correlation: float  # median over the windows of the best Pearson correlation
    delay: float  # median of the windows' best lags, seconds
    delay_low: float  # the smallest and largest of them
    delay_high: float
    windows: int


@dataclasses.dataclass(frozen=True)
class LiveFigures:
    seconds: float  # the measured window, wall clock
    frames_shown: int  # frames the page presented in the window (requestVideoFrameCallback)
    fps_media: float  # frames decoded or dropped late per second of the stream's own timeline (their RTP timestamps)
    fps_wall: float  # frames decoded per wall-clock second (getStats)
    fps_worst_2s: float  # the lowest decoded-frame rate over any two seconds of the window (getStats each second)
    frames_dropped: int  # getStats' framesDropped in the window
    freezes: int  # getStats' freezeCount in the window
    width: int
    height: int
    audio_seconds: float  # speech-back audio played from received packets in the window, seconds
    audio_complete: float  # those samples, less the jitter buffer's stretching, per sample of the audio's own
    # timeline (RTP timestamps): 1.0
    audio_concealed: float  # share of the played samples the browser had to make up (late or lost packets)
    sent_speaking: float  # share of the window the speech sent is louder than SPEAKING_RMS
    back_speaking: float  # the same for the speech back
    mouth: Alignment  # mouth darkness following the loudness of the speech sent (delay: speech sent → lips shown)
    speech: Alignment  # the speech back following the speech sent (delay: sent → played out)
    sync: Alignment  # mouth darkness following the speech played back, lags both ways (delay > 0: lips late)
    carried: Alignment  # the same on the stream's own timeline: the lips against the speech each frame carries
    round_trip: float | None  # ICE round trip, seconds

    def lines(self) -> list[str]:
        return [f"{field.name}: {getattr(self, field.name)}" for field in dataclasses.fields(self)]


def _envelope(bins: list[list[float]], grid: np.ndarray, window_seconds: float = 0.04) -> np.ndarray:
    """Loudness (RMS over `window_seconds`, one video frame) at each grid time, from (time, RMS) bins."""
    if not bins:
        return np.zeros_like(grid)
    at, rms = np.array([b[0] for b in bins]), np.array([b[1] for b in bins])
    power = np.interp(grid, at, rms**2)
    steps = max(1, round(window_seconds / GRID_SECONDS))
    return np.sqrt(np.convolve(power, np.ones(steps) / steps, mode="same"))


def align(reference: np.ndarray, follower: np.ndarray, lags: range, window_seconds: float | None = None) -> Alignment:
    """For each `window_seconds` window of `reference` (WINDOW_SECONDS; every HOP_SECONDS, skipping silent
    ones), the lag in `lags` (grid steps) at which `follower` correlates best with it. `window_seconds`
    0: one window, as long as the lags leave."""
    seconds = WINDOW_SECONDS if window_seconds is None else window_seconds
    size = round(seconds / GRID_SECONDS) or len(reference) - max(0, -lags.start) - max(0, lags.stop - 1)
    hop = round(HOP_SECONDS / GRID_SECONDS)
    found: list[tuple[float, int]] = []
    loud = np.percentile(reference, 95) if len(reference) else 0.0
    for start in range(max(0, -lags.start), len(reference) - size - max(0, lags.stop - 1) + 1, hop):
        window = reference[start:start + size]
        if window.std() < 0.05 * loud:
            continue  # a pause: nothing to align
        candidates = np.lib.stride_tricks.sliding_window_view(follower[start + lags.start:start + lags.stop - 1 + size],
                                                              size)[:: lags.step]
        a = (window - window.mean()) / window.std()
        spread = candidates.std(axis=1)
        scores = np.where(spread > 0, ((candidates - candidates.mean(axis=1, keepdims=True)) @ a)
                          / (size * np.where(spread > 0, spread, 1)), -1.0)
        best = int(np.argmax(scores))
        found.append((float(scores[best]), lags.start + best * lags.step))
    if not found:
        return Alignment(correlation=float("nan"), delay=float("nan"), delay_low=float("nan"),
                         delay_high=float("nan"), windows=0)
    correlations, delays = np.array([f[0] for f in found]), np.array([f[1] for f in found]) * GRID_SECONDS
    return Alignment(correlation=round(float(np.median(correlations)), 3), delay=round(float(np.median(delays)), 3),
                     delay_low=round(float(delays.min()), 3), delay_high=round(float(delays.max()), 3),
                     windows=len(found))


def _unwrapped(rtp: np.ndarray) -> np.ndarray:
    """32-bit RTP timestamps, which wrap, as a count from the first."""
    steps = np.diff(rtp) % 2**32
    return np.concatenate([[0.0], np.cumsum(np.where(steps >= 2**31, steps - 2**32, steps))])


def carried_sync(recording: dict[str, Any]) -> Alignment:
    """The mouth against the speech on the stream's own timeline: each frame placed by its RTP timestamp
    (90 kHz), each packet of the speech back by its own (48 kHz), both counted from their first one in
    the window. Playout, jitter buffers and a session falling behind do not move one against the other
    there, so one lag holds for the whole window (the lag itself mixes the two origins: only the
    correlation says something)."""
    frames = np.array([[np.nan if v is None else v for v in row] for row in recording["frames"]], np.float64)
    frames = frames[~np.isnan(frames[:, 1])]
    packets = np.array(recording["received"], np.float64).reshape(-1, 3)
    if len(frames) < 2 or len(packets) < 2:
        return Alignment(correlation=float("nan"), delay=float("nan"), delay_low=float("nan"),
                         delay_high=float("nan"), windows=0)
    video_at = frames[0, 0] + _unwrapped(frames[:, 1]) / 90
    audio_at = packets[0, 0] + _unwrapped(packets[:, 2]) / 48
    grid = np.arange(max(video_at[0], audio_at[0]), min(video_at[-1], audio_at[-1]), GRID_SECONDS * 1000)
    back = _envelope([[at, level] for at, level in zip(audio_at, packets[:, 1], strict=True)], grid)
    mouth = np.interp(grid, video_at, np.nan_to_num(frames[:, 5]))
    steps = round(MAX_SYNC_SECONDS / GRID_SECONDS)
    return align(back, mouth, range(-steps, steps + 1), window_seconds=0)


def analyse(recording: dict[str, Any]) -> LiveFigures:
    frames = np.array([[np.nan if v is None else v for v in row] for row in recording["frames"]], np.float64)
    first, last = recording["stats"][0], recording["stats"][-1]
    seconds = (last["at"] - first["at"]) / 1000
    shown = frames[:, 0]
    polled = np.array(recording["perSecond"], np.float64).reshape(-1, 2)
    # over two seconds: in one, 25 fps frames number 24 to 26 by where the second starts
    per_two_seconds = (polled[2:, 1] - polled[:-2, 1]) / ((polled[2:, 0] - polled[:-2, 0]) / 1000)
    video_first, video_last = first.get("video", {}), last.get("video", {})
    audio_first, audio_last = first.get("audio", {}), last.get("audio", {})

    def delta(a: dict, b: dict, key: str) -> float:
        return float(b.get(key, 0) - a.get(key, 0))

    # frames that reached the decoder: decoded, or dropped by a browser too busy to decode them in time
    decoded = delta(video_first, video_last, "framesDecoded") + delta(video_first, video_last, "framesDropped")
    media_span = (((last.get("videoRtp") or 0) - (first.get("videoRtp") or 0)) % 2**32) / 90_000

    samples = delta(audio_first, audio_last, "totalSamplesReceived")
    concealed = delta(audio_first, audio_last, "concealedSamples")
    # the jitter buffer stretches speech when packets come late and squeezes it to catch up
    stretched = delta(audio_first, audio_last, "insertedSamplesForDeceleration") - delta(
        audio_first, audio_last, "removedSamplesForAcceleration")
    # totalSamplesReceived counts at the playout rate, Opus's 48 kHz: the RTP clock's
    played_rtp = ((last.get("audioRtp") or 0) - (first.get("audioRtp") or 0)) % 2**32
    sample_seconds = delta(audio_first, audio_last, "totalSamplesDuration") / samples if samples else 0.0

    sent_bins = recording["sent"]
    start = max(shown[0], sent_bins[0][0]) if sent_bins else shown[0]
    end = min(shown[-1], sent_bins[-1][0]) if sent_bins else shown[-1]
    grid = np.arange(start, end, GRID_SECONDS * 1000)
    sent = _envelope(sent_bins, grid)
    back = _envelope(recording["received"], grid)
    mouth = np.interp(grid, shown, np.nan_to_num(frames[:, 5]))
    later = range(0, round(MAX_LAG_SECONDS / GRID_SECONDS) + 1)
    either = range(-round(MAX_SYNC_SECONDS / GRID_SECONDS), round(MAX_SYNC_SECONDS / GRID_SECONDS) + 1)
    pair = last.get("pair") or {}
    return LiveFigures(
        seconds=round(seconds, 2),
        frames_shown=len(frames),
        fps_media=round(decoded / media_span, 2) if media_span > 0 else 0.0,
        fps_wall=round(delta(video_first, video_last, "framesDecoded") / seconds, 2),
        fps_worst_2s=round(float(per_two_seconds.min()), 2) if len(per_two_seconds) else 0.0,
        frames_dropped=int(delta(video_first, video_last, "framesDropped")),
        freezes=int(delta(video_first, video_last, "freezeCount")),
        width=int(np.nanmax(frames[:, 3])),
        height=int(np.nanmax(frames[:, 4])),
        audio_seconds=round((samples - concealed) * sample_seconds, 2),
        audio_complete=round((samples - concealed - stretched) / played_rtp, 3) if played_rtp > 0 else 0.0,
        audio_concealed=round(concealed / samples, 4) if samples else 1.0,
        sent_speaking=round(float((sent > SPEAKING_RMS).mean()), 3),
        back_speaking=round(float((back > SPEAKING_RMS).mean()), 3),
        mouth=align(sent, mouth, later),
        speech=align(sent, back, later),
        sync=align(back, mouth, either),
        carried=carried_sync(recording),
        round_trip=pair.get("currentRoundTripTime"),
    )


class LivePage:
    """The /live page in a fresh browser context: fill it in, start, measure, stop."""

    def __init__(self, browser: Any, url: str) -> None:
        self.box = (0, 0, 0, 0)
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.page.goto(f"{url}/live")

    def start(self, portrait: Path | None = None, avatar_id: str = "", api_key: str = "",
              resolution: str = "", speech: Path | None = None) -> None:
        """Fills the form (speech: a file to send instead of the microphone) and presses Start."""
        self.page.set_input_files("#portrait-file", [] if portrait is None else str(portrait))
        self.page.set_input_files("#speech-file", [] if speech is None else str(speech))
        self.page.fill("#avatar-id", avatar_id)
        self.page.fill("#api-key", api_key)
        self.page.fill("#resolution", resolution)
        self.page.click("#start")

    def error(self, timeout: float = 60.0) -> str:
        """The error the page shows, waiting for one up to `timeout` seconds."""
        self.page.wait_for_selector("#error:not([hidden])", timeout=timeout * 1000)
        return self.page.inner_text("#error")

    def wait_error_change(self, previous: str, timeout: float = 60.0) -> str:
        """The next error the page shows, once it differs from `previous`."""
        self.page.wait_for_function(
            "(previous) => { const box = document.querySelector('#error');"
            " return !box.hidden && box.textContent !== previous; }", arg=previous, timeout=timeout * 1000)
        return self.page.inner_text("#error")

    def status(self) -> str:
        return self.page.inner_text("#status")

    def wait_live(self, timeout: float = 60.0) -> str:
        """Waits until the session is open and video frames are being shown; returns its id."""
        self.page.wait_for_function(
            "() => (window.liveSession && liveSession.video.readyState >= 2)"
            " || !document.querySelector('#error').hidden", timeout=timeout * 1000)
        assert not self.shown_error(), f"the page shows an error: {self.shown_error()}"
        return self.page.evaluate("() => window.liveSession.id")

    def begin_measuring(self) -> tuple[int, int, int, int]:
        """Finds the mouth in the frame shown now and starts recording; returns the mouth box."""
        self.page.evaluate(MEASURE_JS)
        self.box = mouth_box(decode_data_url(self.page.evaluate("() => window.liveMeasure.grab()")))
        self.page.evaluate(BEGIN_JS, list(self.box))
        return self.box

    def shown_error(self) -> str:
        return self.page.inner_text("#error") if self.page.is_visible("#error") else ""

    def end_measuring(self) -> dict[str, Any]:
        recording = self.page.evaluate(END_JS)
        recording["box"] = self.box
        return recording

    def measure(self, seconds: float) -> dict[str, Any]:
        """Records `seconds` of the running session."""
        self.begin_measuring()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.page.wait_for_timeout(min(left, 1.0) * 1000)
            assert not self.shown_error(), f"the page shows an error while measuring: {self.shown_error()}"
        return self.end_measuring()

    def stop(self, timeout: float = 20.0) -> str:
        """Presses Stop; returns the status once the page says how it ended."""
        self.page.click("#stop")
        self.page.wait_for_function(
            "() => /ended|Not running/.test(document.querySelector('#status').textContent)", timeout=timeout * 1000)
        return self.status()

    def close(self) -> None:
        self.context.close()
