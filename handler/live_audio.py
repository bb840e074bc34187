"""Speech as a live session receives it: pieces of PCM at any rate, resampled as a stream.

A door hands the session mono pieces of 10-40 ms at its transport's rate (48 kHz from WebRTC's
Opus, 24 kHz or 48 kHz from a LiveKit agent's TTS); the generator takes 16 kHz, the outgoing
speech leaves at 48 kHz. `StreamingResampler` converts piece by piece with a windowed-sinc filter
whose history and fractional position carry over from one piece to the next, so the output is the
one a single conversion of the whole recording would give: no click, gap or drift at a boundary.
"""

from __future__ import annotations

import math

import numpy as np

# Zero crossings of the sinc kernel on each side, at the lower of the two rates: 16 keeps the
# pass band flat to ~90 % of the lower Nyquist frequency and delays the output by 1 ms at 48 -> 16 kHz.
KERNEL_HALF_CROSSINGS = 16
# Output samples computed at once (the kernel's matrix: this many rows of ~100 taps).
BLOCK_OUTPUTS = 4096
# The gain past the cut-off that a Kaiser window with this beta leaves, ~ -80 dB.
KAISER_BETA = 8.6


def as_float_mono(pcm: np.ndarray, field: str = "pcm") -> np.ndarray:
    """`pcm` (int16, or float in [-1, 1]; one channel) as float32 in [-1, 1]. Raises ValueError naming `field`."""
    samples = np.asarray(pcm)
    if samples.ndim != 1:
        raise ValueError(f"{field} must be mono, one sample per time step (shape (n,)), not shape {samples.shape}; "
                         "mix the channels first.")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype.kind == "f":
        converted = samples.astype(np.float32)
        if not np.all(np.isfinite(converted)):
            raise ValueError(f"{field} holds NaN or infinite samples; send float samples in [-1, 1].")
        return np.clip(converted, -1.0, 1.0)
    raise ValueError(f"{field} must be int16 or float32 samples, not {samples.dtype}.")


def to_int16(samples: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] as int16 PCM."""
    return np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


class StreamingResampler:
    """Converts a stream of float32 pieces from `input_rate` to `output_rate`, carrying its state.

    Output sample n sits at input time n * input_rate / output_rate (kept as an exact fraction, so
    nothing drifts over an hour); it is produced once the input reaches the kernel's right edge,
    KERNEL_HALF_CROSSINGS periods of the lower rate later. `reset` forgets everything (an interruption).
    """

    def __init__(self, input_rate: int, output_rate: int) -> None:
        if input_rate <= 0 or output_rate <= 0:
            raise ValueError(f"sample rates must be positive, not {input_rate} -> {output_rate}")
        divisor = math.gcd(input_rate, output_rate)
        self.input_rate, self.output_rate = input_rate, output_rate
        # input time of output n, in units of 1/up of an input sample: n * down
        self._up, self._down = output_rate // divisor, input_rate // divisor
        self._cutoff = min(1.0, output_rate / input_rate)  # of the input's Nyquist frequency
        self._half_width = math.ceil(KERNEL_HALF_CROSSINGS / self._cutoff)  # input samples each side
        # a Kaiser window reaching zero just past the kernel's edges, tabulated finely once (np.i0 is slow)
        grid = np.linspace(-self._half_width - 1, self._half_width + 1, 64 * (self._half_width + 1) + 1)
        self._window = (grid, np.i0(KAISER_BETA * np.sqrt(1.0 - (grid / (self._half_width + 1)) ** 2)) / np.i0(
            KAISER_BETA))
        self.reset()

    def reset(self) -> None:
        #: input samples held, the first being input sample number `_held_start`
        self._held = np.zeros(0, dtype=np.float32)
        self._held_start = 0
        self._received = 0
        self._produced = 0

    @property
    def passthrough(self) -> bool:
        return self._up == self._down

    def process(self, samples: np.ndarray) -> np.ndarray:
        """The output samples `samples` (float32) complete, after those already returned."""
        if self.passthrough:
            return np.asarray(samples, dtype=np.float32)
        if self._received == 0:
            # a stream starts in silence: pad the kernel's left half so the first sample has its history
            self._held = np.zeros(self._half_width, dtype=np.float32)
            self._held_start = -self._half_width
        self._held = np.concatenate([self._held, np.asarray(samples, dtype=np.float32)])
        self._received += len(samples)
        # the last output n whose kernel's right edge has arrived: n * down / up + half_width <= received - 1
        last = ((self._received - 1 - self._half_width) * self._up) // self._down
        count = last - self._produced + 1
        if count <= 0:
            return np.zeros(0, dtype=np.float32)
        # in blocks: the kernel's matrix for a long piece at once would take a gigabyte
        output = np.concatenate([
            self._convolve(np.arange(first, min(first + BLOCK_OUTPUTS, self._produced + count)))
            for first in range(self._produced, self._produced + count, BLOCK_OUTPUTS)])
        self._produced += count
        # keep what the next output's kernel reaches back to
        keep_from = (self._produced * self._down) // self._up - self._half_width
        drop = max(0, keep_from - self._held_start)
        self._held = self._held[drop:]
        self._held_start += drop
        return output

    def _convolve(self, indices: np.ndarray) -> np.ndarray:
        position = indices * self._down / self._up  # input time of each output sample
        base = np.floor(position).astype(np.int64)
        offsets = np.arange(-self._half_width + 1, self._half_width + 1)
        taps = base[:, None] + offsets[None, :]  # input samples each output reads
        distance = position[:, None] - taps
        weights = self._cutoff * np.sinc(self._cutoff * distance) * np.interp(distance, *self._window)
        values = self._held[taps - self._held_start]
        return (values * weights).sum(axis=1).astype(np.float32)
