"""Wan2.2-S2V fast mode: Live Avatar's distilled sampler, a block of frames at a time.

The behaviour is the reference's single-GPU path (Alibaba-Quark/LiveAvatar,
`minimal_inference/s2v_streaming_interact.py` -> `causal_s2v_pipeline.py`):

- the portrait, encoded as 5 identical frames, gives the reference latent (their second latent);
  encoded as 5 x 73 identical frames, the motion history; both go through the transformer once
  per job at timestep zero, and every layer keeps their keys and values;
- the video runs at Live Avatar's 25 fps (the quality mode: Wan2.2-S2V's 16), so a frame carries
  0.04 s of speech and a clip of 48 frames 1.92 s;
- the speech is cut into clips of 48 frames (12 latent frames), each with noise from its own seed
  (job seed + clip index); a clip is denoised 3 latent frames (one block) at a time, 4 Euler steps
  without guidance, each step attending to its own cache of the last 12 latent frames;
- a clip is decoded behind the latents of the last 365 frames of video (the portrait's frames
  before the first clip), and the first clip's first 3 frames are dropped.

Here each block is decoded as soon as it is denoised (the VAE decoder is causal, so this equals
the reference's decode of the whole clip) and its frames leave at once; generation stops at the
block that completes the speech, so nothing past the speech is generated. The VAE's history work
is limited to what reaches the pixels and done once per frame (_ClipDecoder). The caches hold one
clip, the VAE its causal states: memory does not grow with the video's length.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterator

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from model.base import SPEECH_SAMPLE_RATE, ProgressCallback, num_frames_for
from model.wan_common.frames import fit_portrait, to_pixels, to_uint8_frames
from model.wan_common.memory import GIB
from model.wan_common.progress import ProgressClock
from model.wan_common.vae import (
    StreamingDecoder,
    StreamingEncoder,
    WanVideoVAE,
    decoder_history_latents,
    encoder_history_latents,
)

from ._transformer_causal import BlockPosition, BlockRing, StepRings
from .config import (
    FAST_FPS,
    FAST_FRAMES_PER_CLIP,
    FAST_LATENT_FRAMES_PER_BLOCK,
    FAST_PORTRAIT_REPEATS,
    FAST_REFERENCE_DISTANCE,
    FAST_SAMPLE_SHIFT,
    MOTION_FRAMES,
    NUM_TRAIN_TIMESTEPS,
    VAE_STRIDE,
)
from .memory import RingPlan, fast_workspace_bytes, gpu_room, place_rings
from .pipeline import LATENT_MOTION_FRAMES, WanS2VPipeline
from .speech import SpeechEncoder, bucket_clip_features

log = logging.getLogger(__name__)

LATENT_FRAMES_PER_CLIP = FAST_FRAMES_PER_CLIP // VAE_STRIDE[0]
BLOCKS_PER_CLIP = LATENT_FRAMES_PER_CLIP // FAST_LATENT_FRAMES_PER_BLOCK
FRAMES_PER_BLOCK = FAST_LATENT_FRAMES_PER_BLOCK * VAE_STRIDE[0]
# The portrait's frames that stand for the video before the first clip, and whose latents are
# the first clip's decoding context.
HISTORY_FRAMES = FAST_PORTRAIT_REPEATS * MOTION_FRAMES
# The first clip is decoded behind the portrait's frames and its first frames are dropped.
FIRST_CLIP_DROPPED_FRAMES = VAE_STRIDE[0] - 1
FIRST_CLIP_FRAMES = FAST_FRAMES_PER_CLIP - FIRST_CLIP_DROPPED_FRAMES


@dataclasses.dataclass(frozen=True)
class FastPortrait:
    """A portrait fitted to the video size and encoded the way the fast mode needs it."""

    pixels: torch.Tensor  # [1, 3, 1, H, W] in [-1, 1], float32
    ref_latent: torch.Tensor  # [1, 16, 1, H/8, W/8]
    history_latents: torch.Tensor  # [1, 16, 1 + (HISTORY_FRAMES - 1) / 4, H/8, W/8]

    @property
    def height(self) -> int:
        return self.pixels.shape[3]

    @property
    def width(self) -> int:
        return self.pixels.shape[4]


@dataclasses.dataclass(frozen=True)
class FastSpeech:
    """A speech's features as the fast mode's blocks take them, and the video it makes."""

    features: torch.Tensor  # [layers, hidden, frames with speech]: one column per video frame at FAST_FPS
    num_frames: int  # the video's: as long as the speech at FAST_FPS

    @classmethod
    def encode(cls, encoder: SpeechEncoder, speech_16k: np.ndarray) -> FastSpeech:
        # In float32 on purpose, where Live Avatar casts wav2vec2 to bf16 on a GPU (WanS2V.generate):
        # the encoder is the quality mode's too, whose reference keeps it in float32, and a bf16 copy
        # would sit beside the caches. Measured on the parity suite's tiny wav2vec2 (24 layers, 4 s
        # and 10 s of test speech): bf16 features differ by 2.6-2.8 % of their largest value (rms
        # 0.8 %), against 0.2 % for the bf16 rounding every block's features get before the transformer.
        num_frames = num_frames_for(len(speech_16k) / SPEECH_SAMPLE_RATE, FAST_FPS)
        return cls(encoder.encode(speech_16k, fps=FAST_FPS), num_frames)

    @property
    def num_blocks(self) -> int:
        return _blocks_for(self.num_frames)

    def block(self, index: int) -> torch.Tensor:
        """Block `index`'s features [1, layers, hidden, FRAMES_PER_BLOCK], zeros past the speech."""
        return bucket_clip_features(self.features, index, FRAMES_PER_BLOCK)


class FastSampler:
    """The fast mode over the models of a WanS2VPipeline (the transformer with the Live Avatar
    LoRA active while it runs; see lora.py)."""

    def __init__(self, pipeline: WanS2VPipeline) -> None:
        self.pipeline = pipeline
        self.vae = _vae_in(pipeline.vae, pipeline.dtype)
        # Rings in pinned host memory take seconds to allocate: kept for the next job of that size.
        self._host_rings: dict[tuple[int, int], list[BlockRing]] = {}
        self.ring_plan: RingPlan | None = None  # the last job's

    def encode_portrait(self, image: np.ndarray, height: int, width: int) -> FastPortrait:
        """The reference latent and motion-history latents of an RGB uint8 portrait."""
        vae = self.vae
        pixels = to_pixels(fit_portrait(image, height, width))[None, :, None].to(vae.device)
        ref_latent = vae.encode(pixels.expand(-1, -1, FAST_PORTRAIT_REPEATS, -1, -1))[:, :, 1:]
        history_latents = vae.encode(pixels.expand(-1, -1, HISTORY_FRAMES, -1, -1))
        device = self.pipeline.device
        return FastPortrait(pixels, ref_latent.to(device), history_latents.to(device))

    def generate(
        self,
        portrait: FastPortrait,
        speech_16k: np.ndarray,
        seed: int,
        prompt: str,
        num_steps: int,
        on_progress: ProgressCallback,
    ) -> Iterator[np.ndarray]:
        """Yield RGB uint8 frames (n, height, width, 3) block by block, exactly as long as the speech."""
        for pixels in self.generate_pixels(portrait, speech_16k, seed, prompt, num_steps, on_progress):
            yield to_uint8_frames(pixels)

    @torch.no_grad()
    def generate_pixels(
        self,
        portrait: FastPortrait,
        speech_16k: np.ndarray,
        seed: int,
        prompt: str,
        num_steps: int,
        on_progress: ProgressCallback,
        reference_distances: Iterator[int] | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield float pixels [1, 3, n, height, width] in [-1, 1] block by block, exactly as long as
        the speech.

        `reference_distances` gives the reference image's distance for each transformer pass;
        by default they are drawn from the job's seed.
        """
        pipe = self.pipeline
        speech = FastSpeech.encode(pipe.speech_encoder, speech_16k)
        context = pipe.encode_prompt(prompt)
        distances = reference_distances if reference_distances is not None else _seeded_distances(seed)
        sigmas, timesteps = euler_schedule(num_steps, pipe.device)
        num_blocks = speech.num_blocks
        clock = ProgressClock(num_blocks * (num_steps + 1), on_progress)

        transformer = pipe.transformer
        condition = transformer.prefill_condition(
            context, portrait.ref_latent.to(pipe.dtype), portrait.history_latents.to(pipe.dtype)
        )
        rings = self._step_rings(portrait, num_steps)
        decoder = _ClipDecoder(self.vae, portrait, num_blocks)
        remaining = speech.num_frames
        for block in range(num_blocks):
            clip, block_in_clip = divmod(block, BLOCKS_PER_CLIP)
            if block_in_clip == 0:
                noise = self._clip_noise(portrait, seed + clip)
            first = block_in_clip * FAST_LATENT_FRAMES_PER_BLOCK
            latents = noise[:, :, first : first + FAST_LATENT_FRAMES_PER_BLOCK]
            audio = speech.block(block).to(pipe.device, pipe.dtype)
            position = BlockPosition(block * FAST_LATENT_FRAMES_PER_BLOCK, FAST_LATENT_FRAMES_PER_BLOCK)
            for step, t in enumerate(timesteps):
                with rings.for_step(step, position) as ring:
                    prediction = transformer.forward_block(
                        latents, t.expand(1), context, audio, ring, condition, position, next(distances),
                        motion_frames=(MOTION_FRAMES, LATENT_MOTION_FRAMES),
                    ).to(latents.dtype)
                latents = euler_step(latents, prediction, sigmas[step], sigmas[step + 1])
                clock.tick(f"block {block + 1}/{num_blocks}, step {step + 1}/{num_steps}")

            pixels = decoder.decode(latents, block)[:, :, :remaining]
            clock.tick(f"block {block + 1}/{num_blocks} decoded")
            remaining -= pixels.shape[2]
            yield pixels

    def _step_rings(self, portrait: FastPortrait, num_steps: int) -> StepRings:
        """One attention ring per step (about 10 GB each at 704x384 in bf16): on the device as many as
        fit beside the fast mode's workspace there (once the text encoder has left it, where that
        keeps more), the others in host memory, streamed a layer at a time (memory.place_rings)."""
        pipe = self.pipeline
        config = pipe.transformer.config
        patch = pipe.transformer.patch_size
        tokens_per_frame = (
            (portrait.height // VAE_STRIDE[1] // patch[1]) * (portrait.width // VAE_STRIDE[2] // patch[2])
        )

        def ring(device: torch.device, pin_memory: bool = False, layers: int = config.num_layers) -> BlockRing:
            return BlockRing.allocate(
                layers, 1, LATENT_FRAMES_PER_CLIP, tokens_per_frame, config.num_attention_heads,
                config.attention_head_dim, pipe.dtype, device, pin_memory,
            )

        per_ring = ring(torch.device("meta")).nbytes
        streaming_buffers = ring(torch.device("meta"), layers=2).nbytes
        device = pipe.device
        workspace = fast_workspace_bytes(portrait.height, portrait.width)
        plan = place_rings(
            per_ring, num_steps, streaming_buffers, workspace, gpu_room(device), pipe.text_encoder_bytes_on(device)
        )
        log.info("fast mode: %d attention rings of %.1f GiB, %s", num_steps, per_ring / GIB, plan)
        self.ring_plan = plan
        if plan.move_text_encoder:
            pipe.keep_text_encoder_in_host_memory()
        resident = [ring(device) for _ in range(plan.resident)]
        streamed = num_steps - plan.resident
        if not streamed:
            self._host_rings.clear()
            return StepRings(resident)
        key = (tokens_per_frame, streamed)
        if key not in self._host_rings:
            self._host_rings.clear()
            pinned = torch.cuda.is_available()  # pinned memory makes the copies asynchronous; CUDA only
            self._host_rings[key] = [ring(torch.device("cpu"), pin_memory=pinned) for _ in range(streamed)]
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        return StepRings(resident, self._host_rings[key], ring(device, layers=2), stream)

    def _clip_noise(self, portrait: FastPortrait, seed: int) -> torch.Tensor:
        """The clip's noise [1, C, 12, h, w], drawn in the compute dtype like the reference."""
        pipe = self.pipeline
        generator = torch.Generator(pipe.device).manual_seed(seed)
        shape = (
            1, pipe.transformer.config.in_channels, LATENT_FRAMES_PER_CLIP,
            portrait.height // VAE_STRIDE[1], portrait.width // VAE_STRIDE[2],
        )
        return torch.randn(shape, dtype=pipe.dtype, device=pipe.device, generator=generator)


def _vae_in(vae: WanVideoVAE, dtype: torch.dtype) -> WanVideoVAE:
    """The VAE the fast mode runs: in the compute dtype, as Live Avatar runs its own (bf16 on a
    GPU; the quality mode's reference keeps it in float32). Twice as fast, and the fast mode's
    per-clip VAE work (a 365-frame history encoded and decoded per 48-frame clip) outweighs its
    denoising. A copy of 0.25 GB in bf16; the same VAE when the dtypes agree.

    The latents' normalisation (mean, 1 / std) stays in float32 (WanVideoVAE), where Live
    Avatar's bf16 Wan2_1_VAE keeps both constants and the arithmetic in bf16. Measured on a tiny
    bf16 VAE with Wan2.1's 16 constants: encoded latents differ by 0.7 % of their largest value
    (rms 0.3 %; bf16's own rounding of them: 0.25 %); unit-variance latents de-normalised for
    decoding by 0.5 % (rms 0.4 %), their decoded pixels by 1.0 % rms."""
    if vae.dtype == dtype:
        return vae
    return WanVideoVAE(copy.deepcopy(vae.model).to(dtype))


class _ClipDecoder:
    """Decodes a block as soon as it is denoised, as the reference decodes its clips: each behind
    the latents of an encode of the video's last 365 frames (the portrait's, before the first clip),
    the first clip's first frames dropped.

    The same pixels for a fraction of the reference's work per clip (it encodes 365 frames and
    decodes 92 history latents):
    - the VAE is causal with a finite temporal reach, so only the last `decoded_latents` history
      latents (Wan2.1's VAE: 38, `decoder_history_latents`) reach a clip's pixels, and those are
      the latents of an encode of only the history's last `encoded_frames` (261 of 365;
      `history_window`);
    - the video is encoded as it is decoded, one continuous encode from where the second clip's
      window starts, so a clip's 48 new frames are encoded once (`StreamingEncoder`) instead of
      the whole window again per clip: past the encoder's reach from its start, a continued encode's
      latents are the window's. Frames of the last clip are history for nothing and not encoded;
    - one decoder follows the history latents: a clip's decoder is a fork of it, and after the
      clip it goes on with the latents encoded since (the first window's last 38, then each clip's
      12) instead of a fresh decode of 38. Its state after them depends on the last 38 alone, so
      it is that of a decode of the whole history, whatever it decoded before (the portrait's
      own history latents, before the second clip).
    All are exact: the clips' pixels equal the reference's whole-history way to the bit
    (tests/test_fast_mode_vae_history.py). No pixel history is kept, and a block's frames are
    encoded once they have left (with the next block), so none waits for it.
    """

    def __init__(self, vae: WanVideoVAE, portrait: FastPortrait, num_blocks: int) -> None:
        self.vae = vae
        self.portrait = portrait
        self.num_clips = -(-num_blocks // BLOCKS_PER_CLIP)
        self.decoded_latents, self.encoded_frames = history_window(vae, portrait.history_latents.shape[2])
        # The first clip's frames are the last of the second clip's window; the portrait's fill the rest.
        self._portrait_frames = self.encoded_frames - FIRST_CLIP_FRAMES
        if self._portrait_frames < 1:
            raise NotImplementedError(
                f"a VAE whose history window ({self.encoded_frames} frames) ends in the first clip"
            )
        self._encoder = StreamingEncoder(vae, keep=self.decoded_latents)
        self._encoder_started = False
        self._new_latents = 0  # encoded since the clip began
        self._unencoded: torch.Tensor | None = None  # the last block's frames, encoded with the next block
        self._history = StreamingDecoder(vae)
        self._clip: StreamingDecoder | None = None

    def decode(self, latents: torch.Tensor, block: int) -> torch.Tensor:
        """Float pixels [1, 3, n, H, W] of the block's latents; blocks come in order, from the first."""
        clip, block_in_clip = divmod(block, BLOCKS_PER_CLIP)
        self._encode_history()  # the last block's frames, once they have left
        if block_in_clip == 0:
            self._start_clip(clip)
        assert self._clip is not None, "a clip's blocks are decoded in order, from its first"
        pixels = self._clip.decode(latents)
        if block == 0:
            pixels = pixels[:, :, FIRST_CLIP_DROPPED_FRAMES:]
        if clip + 1 < self.num_clips:  # the next clip's history
            self._unencoded = pixels
        return pixels

    def _start_clip(self, clip: int) -> None:
        if clip == 0:
            history = self.portrait.history_latents[:, :, -self.decoded_latents :]
        else:
            history = self._encoder.last_latents(min(self._new_latents, self.decoded_latents))
            self._new_latents = 0
        # the decoder's state after them is that of a decode of the whole history
        self._history.decode(history)
        self._clip = self._history.fork()

    def _encode_history(self) -> None:
        if self._unencoded is None:
            return
        if not self._encoder_started:
            portrait = self.portrait.pixels.expand(-1, -1, self._portrait_frames, -1, -1)
            self._new_latents += self._encoder.encode(portrait)
            self._encoder_started = True
        self._new_latents += self._encoder.encode(self._unencoded)
        self._unencoded = None


def history_window(vae: WanVideoVAE, history_latents: int) -> tuple[int, int]:
    """(history latents decoded before a clip, history frames encoded for them): the last latents
    the decoder's reach needs, and the last 1 + 4k history frames whose encode gives those
    latents exactly (its first latent, that frame alone, and the encoder's reach after it
    differ). The whole history where it is shorter."""
    config = vae.model.config
    decoded = min(decoder_history_latents(config), history_latents)
    latents = decoded - 1 + encoder_history_latents(config)  # after the encode's first
    frames_per_latent = VAE_STRIDE[0]
    return decoded, min(1 + frames_per_latent * latents, HISTORY_FRAMES)


def euler_schedule(num_steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas [num_steps + 1] ending at 0, timesteps [num_steps]) of the reference's sampler:
    diffusers' flow-matching Euler scheduler with shift 3."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=FAST_SAMPLE_SHIFT)
    scheduler.set_timesteps(num_steps, device=device)
    return scheduler.sigmas, scheduler.timesteps


def euler_step(
    sample: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One Euler step of the flow with diffusers' scheduler's arithmetic: the sample in float32,
    the result in the velocity's dtype."""
    return (sample.float() + (sigma_next - sigma) * velocity).to(velocity.dtype)


def _blocks_for(num_frames: int) -> int:
    """Blocks until the speech is covered; the first block gives 3 frames fewer."""
    return -(-(num_frames + FIRST_CLIP_DROPPED_FRAMES) // FRAMES_PER_BLOCK)


def _seeded_distances(seed: int) -> Iterator[int]:
    low, high = FAST_REFERENCE_DISTANCE
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.integers(low, high + 1))
