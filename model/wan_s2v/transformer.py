"""The Wan2.2-S2V diffusion transformer as a diffusers model.

One forward pass denoises one clip. The token sequence is: the noisy video latents (plus the pose
condition), then the reference image, then the FramePack-compressed motion history. Video tokens
are modulated with the diffusion timestep, the conditioning tokens with timestep zero; speech
enters through cross-attention injectors after selected blocks; only the video tokens come out.

The fast mode (Live Avatar) uses the same weights block by block: `prefill_condition` runs the
conditioning tokens once per job, then `forward_block` denoises a few latent frames at a time
against the cached keys and values (_transformer_causal.py).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import PixArtAlphaTextProjection
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from torch import nn

from model.wan_s2v._transformer_audio import AudioEmbeddings, AudioInjector, CausalAudioEncoder
from model.wan_s2v._transformer_block import ATTENTION_KERNELS, WanS2VTransformerBlock, attention_kernel
from model.wan_s2v._transformer_causal import (
    BlockPosition,
    BlockRing,
    CachedBlockAttention,
    ConditionCache,
    LayerStreamedRing,
    PrefillAttention,
)
from model.wan_s2v._transformer_embeddings import TimestepEmbedder, linear_float32
from model.wan_s2v._transformer_motion import FramePackMotionEmbedding
from model.wan_s2v._transformer_rope import PositionGrid, RotaryEmbedding

# The reference image's tokens sit at this time position, far from the clip's own frames.
REFERENCE_IMAGE_TIME = 30

# Token types added as learned embeddings: noisy video, reference image, motion history.
VIDEO_TOKEN, REFERENCE_TOKEN, MOTION_TOKEN = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class TokenSequence:
    """The transformer's input sequence: float32 `tokens` [B, N, dim] laid out as `position_grids`."""

    tokens: torch.Tensor
    position_grids: list[PositionGrid]
    num_video_tokens: int


class WanS2VTransformer3DModel(ModelMixin, ConfigMixin):
    """Wan2.2-S2V transformer. Defaults are the official 14B configuration."""

    _no_split_modules = ["WanS2VTransformerBlock"]
    # Layers whose weights are read outside their own forward (their dtype taken as the compute
    # dtype, or their weights used in float32 arithmetic), plus the small conditioning layers that
    # diffusers' Wan keeps out of low-precision storage too. The blocks and audio injectors take
    # their compute dtype from their attention weights', so storing those in another dtype than
    # they compute in (enable_layerwise_casting without skipping them) does not run yet.
    _skip_layerwise_casting_patterns = [
        "patch_embedding", "pose_embedding", "motion_embedding", "token_type_embedding", "text_embedder",
        "time_embedder", "time_proj", "audio_encoder", "norm", "^proj_out$",
    ]
    # None: the reference loads every weight in its param dtype (bf16) and computes the timestep
    # embedding, modulation and head in float32 from those bf16 weights under autocast, which
    # linear_float32 reproduces; fp32 copies of them would change its numbers.
    _keep_in_fp32_modules = None

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        in_channels: int = 16,
        out_channels: int = 16,
        pose_channels: int = 16,
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        freq_dim: int = 256,
        text_dim: int = 4096,
        text_len: int = 512,
        cross_attn_norm: bool = True,
        eps: float = 1e-6,
        rope_theta: float = 10000.0,
        audio_dim: int = 1024,
        num_audio_layers: int = 25,
        num_audio_tokens: int = 4,
        audio_inject_layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39),
        audio_adaptive_norm: bool = True,
        zero_timestep: bool = True,
    ):
        super().__init__()
        dim = num_attention_heads * attention_head_dim
        patch_t, patch_h, patch_w = patch_size
        self.patch_size = (patch_t, patch_h, patch_w)
        self.audio_inject_layers = tuple(audio_inject_layers)
        if list(self.audio_inject_layers) != sorted(set(self.audio_inject_layers)) or any(
            not 0 <= layer < num_layers for layer in self.audio_inject_layers
        ):
            raise ValueError(
                f"audio_inject_layers {self.audio_inject_layers} must be increasing block indices below {num_layers}"
            )

        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.pose_embedding = nn.Conv3d(pose_channels, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.motion_embedding = FramePackMotionEmbedding(in_channels, dim)
        self.token_type_embedding = nn.Embedding(3, dim)
        self.text_embedder = PixArtAlphaTextProjection(text_dim, dim, act_fn="gelu_tanh")
        self.time_embedder = TimestepEmbedder(freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.rope = RotaryEmbedding(attention_head_dim, theta=rope_theta)
        self.audio_encoder = CausalAudioEncoder(
            audio_dim, num_audio_layers, dim, num_audio_tokens, with_frame_vectors=audio_adaptive_norm
        )

        self.blocks = nn.ModuleList(
            [
                WanS2VTransformerBlock(dim, ffn_dim, num_attention_heads, cross_attn_norm, eps)
                for _ in range(num_layers)
            ]
        )
        self.audio_injectors = nn.ModuleList(
            [AudioInjector(dim, num_attention_heads, audio_adaptive_norm) for _ in self.audio_inject_layers]
        )

        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(self.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        ref_latents: torch.Tensor,
        motion_latents: torch.Tensor,
        audio_features: torch.Tensor,
        pose_latents: torch.Tensor | None = None,
        motion_frames: tuple[int, int] = (73, 19),
        drop_motion_frames: bool = False,
    ) -> torch.Tensor:
        """Predict the flow of one clip.

        Args:
            hidden_states: noisy clip latents [B, C, T, h, w].
            timestep: diffusion timestep per sample [B].
            encoder_hidden_states: text embeddings [B, L, text_dim], L <= text_len (zero-padded here).
            ref_latents: the portrait's latent [B, C, 1, h, w].
            motion_latents: latents of the frames before the clip [B, C, T_m, h, w].
            audio_features: the clip's wav2vec2 hidden layers [B, layers, audio_dim, frames].
            pose_latents: pose condition [B, pose_channels, T, h, w]; None means none (zeros).
            motion_frames: (video frames, latent frames) of motion history the audio is padded for.
            drop_motion_frames: leave the motion history out (the first clip).

        Returns:
            The prediction for the clip's latents, [B, out_channels, T, h, w] in float32.
        """
        sequence = self._token_sequence(hidden_states, ref_latents, motion_latents, pose_latents, drop_motion_frames)
        grid = sequence.position_grids[0].tokens
        audio = self._embed_audio(audio_features, motion_frames, grid[0])
        hidden = sequence.tokens
        time_embedding, timestep_modulation = self._embed_timestep(timestep)
        text_states = self._embed_text(encoder_hidden_states)
        rotary_emb = self.rope(sequence.position_grids, hidden.device)
        num_video = sequence.num_video_tokens

        injectors = dict(zip(self.audio_inject_layers, self.audio_injectors, strict=True))
        with attention_kernel(self.attention_kernel):
            for index, block in enumerate(self.blocks):
                hidden = block(hidden, text_states, timestep_modulation, num_video, rotary_emb)
                if index in injectors:
                    self._inject_audio(injectors[index], hidden, num_video, grid[0], audio)

        return self._unpatchify(self._head(hidden[:, :num_video], time_embedding), grid)

    # --- fast mode: block by block against a cache ---------------------------------------------

    def prefill_condition(
        self, encoder_hidden_states: torch.Tensor, ref_latents: torch.Tensor, motion_latents: torch.Tensor
    ) -> ConditionCache:
        """Run the reference image's and the motion history's tokens through every block at
        timestep zero, and keep each layer's keys and values for `forward_block`."""
        tokens, grids = self._condition_tokens(ref_latents, motion_latents, drop_motion_frames=False)
        hidden = tokens.float()
        _, modulation = self._embed_timestep(hidden.new_zeros(hidden.shape[0]))
        text_states = self._embed_text(encoder_hidden_states)
        cache = ConditionCache()
        attention = PrefillAttention(cache, self.rope(grids, hidden.device, half_precision=True))
        with attention_kernel(self.attention_kernel):
            for block in self.blocks:
                hidden = block(
                    hidden, text_states, modulation, 0, self_attention=attention, round_cross_attention_input=True
                )
                hidden = self._round_to_weights_dtype(hidden)
        return cache

    def forward_block(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        audio_features: torch.Tensor,
        ring: BlockRing | LayerStreamedRing,
        condition: ConditionCache,
        position: BlockPosition,
        reference_distance: int,
        motion_frames: tuple[int, int] = (73, 19),
    ) -> torch.Tensor:
        """Predict the flow of one block of latent frames, attending to the ring and the condition.

        Args:
            hidden_states: the block's noisy latents [B, C, F, h, w].
            timestep: diffusion timestep per sample [B].
            encoder_hidden_states: text embeddings [B, L, text_dim].
            audio_features: the block's wav2vec2 layers [B, layers, audio_dim, 4 * F].
            ring: this denoising step's cache; the block's keys and values are written into it.
            condition: `prefill_condition`'s cache.
            position: the block's first latent frame in the whole video, and its length.
            reference_distance: how many latent frames ahead of the block the reference image
                sits once the video has moved past its fixed position.
            motion_frames: (video frames, latent frames) the audio is padded for, as in `forward`.

        Returns:
            The prediction for the block's latents, [B, out_channels, F, h, w] in float32.
        """
        if hidden_states.shape[2] != position.num_frames:
            raise ValueError(f"a block of {hidden_states.shape[2]} latent frames at {position}")
        video, grid = self._video_tokens(hidden_states, pose_latents=None)
        audio = self._embed_audio(audio_features, motion_frames, grid[0])
        hidden = video.float()
        time_embedding, modulation = self._embed_timestep(timestep)
        text_states = self._embed_text(encoder_hidden_states)
        # The reference image keeps its far time position until the video comes within
        # `reference_distance` frames of it, then travels ahead of the video at that distance.
        shift = max(0, position.first_frame - (REFERENCE_IMAGE_TIME - reference_distance))
        block_grid = PositionGrid(grid, (position.first_frame, 0, 0), grid)
        block_rotary = self.rope([block_grid], hidden.device, half_precision=True)
        height, width = hidden_states.shape[3:]
        condition_grids = self._condition_grids((height, width), shift)
        condition_rotary = self.rope(condition_grids, hidden.device, half_precision=True)

        injectors = dict(zip(self.audio_inject_layers, self.audio_injectors, strict=True))
        with attention_kernel(self.attention_kernel):
            for index, block in enumerate(self.blocks):
                attention = CachedBlockAttention(index, ring, condition, position, block_rotary, condition_rotary)
                hidden = block(
                    hidden, text_states, modulation, hidden.shape[1],
                    self_attention=attention, round_cross_attention_input=True,
                )
                hidden = self._round_to_weights_dtype(hidden)
                if index in injectors:
                    self._inject_audio(injectors[index], hidden, hidden.shape[1], grid[0], audio)
                    hidden = self._round_to_weights_dtype(hidden)
        return self._unpatchify(self._head(hidden, time_embedding), grid)

    # --- attention kernel and compilation (WAN_ATTENTION_BACKEND, WAN_COMPILE) -------------------

    # the SDPA kernel every attention runs with (ATTENTION_KERNELS); "auto": torch's choice
    attention_kernel = "auto"

    def configure_attention(self, kernel: str = "auto", compile_blocks: bool = False) -> None:
        """Run every attention with the SDPA kernel `kernel`, and with `compile_blocks` compile
        each block with torch.compile (in place; its first passes per shape pay the compilation)."""
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel {kernel!r} is not one of {', '.join(ATTENTION_KERNELS)}")
        self.attention_kernel = kernel
        if compile_blocks:
            for block in self.blocks:
                block.compile()

    def _round_to_weights_dtype(self, hidden: torch.Tensor) -> torch.Tensor:
        # Live Avatar's blocks hand their output on in the weights' dtype (bf16 on a GPU); its
        # distillation saw that rounding, so the fast mode keeps it. A no-op in float32.
        dtype = self.patch_embedding.weight.dtype
        return hidden if dtype == torch.float32 else hidden.to(dtype).float()

    def _inject_audio(
        self, injector: nn.Module, hidden: torch.Tensor, num_video: int, frames: int, audio: AudioEmbeddings
    ) -> None:
        video = hidden[:, :num_video].unflatten(1, (frames, -1))
        hidden[:, :num_video] += injector(video, audio).flatten(1, 2)

    def _token_sequence(
        self,
        hidden_states: torch.Tensor,
        ref_latents: torch.Tensor,
        motion_latents: torch.Tensor,
        pose_latents: torch.Tensor | None,
        drop_motion_frames: bool,
    ) -> TokenSequence:
        """Video tokens, then the reference image's, then the motion history's (unless dropped)."""
        video, grid = self._video_tokens(hidden_states, pose_latents)
        condition, condition_grids = self._condition_tokens(ref_latents, motion_latents, drop_motion_frames)
        return TokenSequence(
            torch.cat([video, condition], dim=1).float(),
            [PositionGrid(grid, (0, 0, 0), grid), *condition_grids],
            num_video_tokens=math.prod(grid),
        )

    def _video_tokens(
        self, hidden_states: torch.Tensor, pose_latents: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """The noisy latents' tokens [B, n, dim] (weights' dtype) and their (time, height, width) grid."""
        frames, height, width = hidden_states.shape[2:]
        if frames % self.patch_size[0] or height % self.patch_size[1] or width % self.patch_size[2]:
            raise ValueError(f"latents of {tuple(hidden_states.shape[2:])} do not split into {self.patch_size} patches")
        dtype = self.patch_embedding.weight.dtype
        video = self.patch_embedding(hidden_states.to(dtype))
        if pose_latents is None:
            # the pose embedding of an all-zero condition is its bias
            assert self.pose_embedding.bias is not None, "the pose embedding is made with a bias"
            video = video + self.pose_embedding.bias.view(1, -1, 1, 1, 1)
        else:
            video = video + self.pose_embedding(pose_latents.to(dtype))
        grid = tuple(video.shape[2:])
        return video.flatten(2).transpose(1, 2) + self.token_type_embedding.weight[VIDEO_TOKEN], grid

    def _condition_tokens(
        self, ref_latents: torch.Tensor, motion_latents: torch.Tensor, drop_motion_frames: bool
    ) -> tuple[torch.Tensor, list[PositionGrid]]:
        """The reference image's tokens, then the motion history's (unless dropped), and their grids."""
        dtype = self.patch_embedding.weight.dtype
        type_embeddings = self.token_type_embedding.weight
        reference = self.patch_embedding(ref_latents.to(dtype)).flatten(2).transpose(1, 2)
        parts = [reference + type_embeddings[REFERENCE_TOKEN]]
        if not drop_motion_frames:
            parts.append(self.motion_embedding(motion_latents) + type_embeddings[MOTION_TOKEN])
        height, width = ref_latents.shape[3:]
        grids = self._condition_grids((height, width), 0, with_motion=not drop_motion_frames)
        return torch.cat(parts, dim=1), grids

    def _condition_grids(
        self, latent_size: tuple[int, int], reference_shift: int, with_motion: bool = True
    ) -> list[PositionGrid]:
        """RoPE grids of the reference image (moved `reference_shift` frames later) and the motion."""
        area = (latent_size[0] // self.patch_size[1], latent_size[1] // self.patch_size[2])
        grids = [PositionGrid((1, *area), (REFERENCE_IMAGE_TIME + reference_shift, 0, 0), (1, *area))]
        if with_motion:
            grids += FramePackMotionEmbedding.position_grids(*latent_size)
        return grids

    def _embed_audio(
        self, audio_features: torch.Tensor, motion_frames: tuple[int, int], frames: int
    ) -> AudioEmbeddings:
        # The encoder is causal and compresses time 4x; the clip's audio is preceded by its first
        # frame repeated over the motion history, whose encoded frames are then dropped.
        history_frames, history_latent_frames = motion_frames
        padded = torch.cat([audio_features[..., :1].expand(-1, -1, -1, history_frames), audio_features], dim=-1)
        audio = self.audio_encoder(padded).drop_leading_frames(history_latent_frames)
        if audio.tokens.shape[1] != frames:
            raise ValueError(
                f"audio_features of {audio_features.shape[-1]} frames give {audio.tokens.shape[1]} latent frames "
                f"with motion_frames={tuple(motion_frames)}, but the clip has {frames}"
            )
        return audio

    def _embed_timestep(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(time embedding [B, dim] for the head, modulation [B, 2, 6, dim] for the blocks), float32."""
        batch = timestep.shape[0]
        if self.config.zero_timestep:
            timestep = torch.cat([timestep, timestep.new_zeros(1)])
        embedding = self.time_embedder(timestep)
        projections = linear_float32(self.time_proj, F.silu(embedding)).unflatten(1, (6, -1))
        video_modulation = projections[:batch]
        if self.config.zero_timestep:
            condition_modulation = projections[batch:].expand(batch, -1, -1)
        else:
            condition_modulation = video_modulation
        # segments in the blocks' order: VIDEO, CONDITION
        return embedding[:batch], torch.stack([video_modulation, condition_modulation], dim=1)

    def _embed_text(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        length = encoder_hidden_states.shape[1]
        if length > self.config.text_len:
            raise ValueError(f"encoder_hidden_states has {length} tokens, more than text_len={self.config.text_len}")
        padded = F.pad(encoder_hidden_states, (0, 0, 0, self.config.text_len - length))
        return self.text_embedder(padded.to(self.text_embedder.linear_1.weight.dtype))

    def _head(self, video_tokens: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table.float() + time_embedding.unsqueeze(1)).unbind(dim=1)
        normed = self.norm_out(video_tokens) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        return linear_float32(self.proj_out, normed)

    def _unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        batch = tokens.shape[0]
        patch_t, patch_h, patch_w = self.patch_size
        latents = tokens.reshape(batch, *grid, patch_t, patch_h, patch_w, -1)
        latents = latents.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return latents.reshape(batch, -1, grid[0] * patch_t, grid[1] * patch_h, grid[2] * patch_w)
