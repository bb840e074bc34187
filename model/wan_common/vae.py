"""The Wan2.1 video VAE (Wan2.1's models and Wan2.2-S2V alike), as diffusers' AutoencoderKLWan.

Latents are normalised per channel as in the reference's `Wan2_1_VAE`: the posterior mean, minus
`latents_mean`, times 1 / `latents_std` (the reference multiplies by the reciprocal; kept so the
numbers match to the last bit). The reference runs the VAE in float32.

`WanVideoVAE` is a diffusers model component (a ModelMixin holding the AutoencoderKLWan), so that
a pipeline can save and load it; its folder is AutoencoderKLWan's own, loadable without us.

`Wan2.1_VAE.pth` is read with our streamed loader, not `AutoencoderKLWan.from_single_file`: that
one fetches the diffusers config from the Hub unless given one, and converts the whole state dict
at once with a mapping fixed to the Wan2.1 layout; ours renames key by key (the same names,
tests/test_wan_vae.py) like every other Wan checkpoint here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME

from .checkpoint import load_streamed, parameters_on_meta, read_pth, read_safetensors
from .convert_vae import convert_vae_key


class WanVideoVAE(ModelMixin):
    """Pixels in [-1, 1] shaped [B, 3, T, H, W] <-> normalised latents [B, 16, 1 + (T-1)/4, H/8, W/8]."""

    def __init__(self, model: AutoencoderKLWan) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_official(
        cls,
        checkpoint: Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        vae_config: dict | None = None,
    ) -> WanVideoVAE:
        """Load `Wan2.1_VAE.pth` (streamed). `vae_config` overrides AutoencoderKLWan's defaults,
        which are the Wan2.1 VAE's."""
        with parameters_on_meta():
            model = AutoencoderKLWan(**(vae_config or {}))
        num_res_blocks = model.config.num_res_blocks
        load_streamed(
            model,
            read_pth(checkpoint),
            lambda key: convert_vae_key(key, num_res_blocks),
            device,
            dtype,
        )
        return cls(model)

    @classmethod
    def from_pretrained(
        cls,
        folder: Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        torch_dtype: torch.dtype | None = None,
        **loading_options,
    ) -> WanVideoVAE:
        """Load a folder written by `save_pretrained` (weights streamed like the official file).

        `torch_dtype` is how DiffusionPipeline.from_pretrained names `dtype` (default float32); its
        other `loading_options` are for diffusers' own loader and are not needed here.
        """
        with parameters_on_meta():
            model = AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(folder))
        dtype = dtype or torch_dtype or torch.float32
        load_streamed(model, read_safetensors(Path(folder), SAFETENSORS_WEIGHTS_NAME), str, device, dtype)
        return cls(model)

    def save_pretrained(self, folder: Path, **saving_options) -> None:
        """AutoencoderKLWan's folder; `saving_options` are its `save_pretrained`'s."""
        self.model.save_pretrained(folder, **saving_options)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def _mean_and_inverse_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.model.config
        shape = (1, config.z_dim, 1, 1, 1)
        mean = torch.tensor(config.latents_mean, dtype=torch.float32, device=self.device).view(shape)
        std = torch.tensor(config.latents_std, dtype=torch.float32, device=self.device).view(shape)
        return mean, 1.0 / std

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised latents (float32) of a video batch in [-1, 1]."""
        return self._normalised(self.model.encode(pixels.to(self.device, self.dtype)).latent_dist)

    def _normalised(self, posterior: DiagonalGaussianDistribution) -> torch.Tensor:
        mean, inverse_std = self._mean_and_inverse_std()
        return (posterior.mode().float() - mean) * inverse_std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (float32, clamped to [-1, 1]) of normalised latents."""
        mean, inverse_std = self._mean_and_inverse_std()
        raw = latents.to(self.device, torch.float32) / inverse_std + mean
        return self.model.decode(raw.to(self.dtype), return_dict=False)[0].float()


class StreamingDecoder:
    """Decodes one video's latents a few frames at a time, as they are denoised.

    The Wan decoder is causal in time: it turns latent frame i into pixels from frame i and the
    last inputs each causal convolution saw, which it keeps between frames. Keeping that state
    between calls makes the concatenated outputs equal to one `WanVideoVAE.decode` of all the
    latents, so video can leave before its last latent exists.
    """

    def __init__(self, vae: WanVideoVAE) -> None:
        self.vae = vae
        self._state: list = [None] * _causal_convolutions(vae.model.decoder)
        self._frames_seen = 0

    def fork(self) -> StreamingDecoder:
        """A decoder that goes on from this one's state while this one stays where it is. The state's
        tensors are shared until either decoder moves past them (each step replaces a convolution's
        cached inputs, never writes into them), so a fork costs nothing until it decodes."""
        fork = StreamingDecoder(self.vae)
        fork._state = list(self._state)
        fork._frames_seen = self._frames_seen
        return fork

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (float32, clamped to [-1, 1]) of the next normalised latent frames [B, 16, n, h, w]."""
        model = self.vae.model
        mean, inverse_std = self.vae._mean_and_inverse_std()
        raw = (latents.to(self.vae.device, torch.float32) / inverse_std + mean).to(self.vae.dtype)
        projected = model.post_quant_conv(raw)
        frames = []
        for index in range(projected.shape[2]):
            frames.append(
                model.decoder(
                    projected[:, :, index : index + 1],
                    feat_cache=self._state,
                    feat_idx=[0],
                    first_chunk=self._frames_seen == 0,
                )
            )
            self._frames_seen += 1
        return torch.cat(frames, dim=2).clamp(-1, 1).float()


class StreamingEncoder:
    """Encodes one video a few frames at a time, as they arrive, and gives its last latents.

    WanVideoVAE.encode runs the causal encoder on a video's first frame alone, then on each group of
    4 (the VAE's time stride), every causal convolution keeping its last inputs from one to the
    next. This keeps that state between calls too, and holds back the frames of an incomplete group
    until the next call, so its latents are those of one encode of all the frames so far. The last
    `keep` latents are kept unprojected: the final 1x1 convolution runs over all those asked for at
    once, as in one encode, because torch's CPU kernels round it differently for a handful of
    positions (by 1 ulp for 8 of them). Wan2.1 VAE layout only (no patchified input).
    """

    def __init__(self, vae: WanVideoVAE, keep: int) -> None:
        _wan21_layout(vae.model.config)
        self.vae = vae
        self.keep = keep
        self._state: list = [None] * _causal_convolutions(vae.model.encoder)
        self._waiting: torch.Tensor | None = None
        self._features: torch.Tensor | None = None  # the encoder's last outputs, before quant_conv
        self._started = False

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> int:
        """Encode the next frames [B, 3, t, H, W] in [-1, 1]; how many latents they completed."""
        frames = pixels.to(self.vae.device, self.vae.dtype)
        if self._waiting is not None:
            frames = torch.cat([self._waiting, frames], dim=2)
        chunks, first = [], 0
        if not self._started:
            chunks.append(frames[:, :, :1])
            first, self._started = 1, True
        stride = 1 << sum(self.vae.model.config.temperal_downsample)
        end = first + (frames.shape[2] - first) // stride * stride
        chunks += [frames[:, :, start : start + stride] for start in range(first, end, stride)]
        self._waiting = frames[:, :, end:] if end < frames.shape[2] else None
        encoder = self.vae.model.encoder
        for chunk in chunks:
            features = encoder(chunk, feat_cache=self._state, feat_idx=[0])
            if self._features is not None:
                features = torch.cat([self._features, features], dim=2)
            self._features = features[:, :, -self.keep :]
        return len(chunks)

    @torch.no_grad()
    def last_latents(self, count: int) -> torch.Tensor:
        """Normalised latents (float32) [B, 16, count, h, w]: the last `count` (at most `keep`) encoded."""
        kept = 0 if self._features is None else self._features.shape[2]
        if self._features is None or not 0 < count <= kept:
            raise ValueError(f"{count} latents asked for; kept: {kept}")
        projected = self.vae.model.quant_conv(self._features[:, :, -count:])
        return self.vae._normalised(DiagonalGaussianDistribution(projected))


def _causal_convolutions(module: torch.nn.Module) -> int:
    return sum(isinstance(child, WanCausalConv3d) for child in module.modules())


def decoder_history_latents(config) -> int:
    """How many latent frames before a latent the causal decoder's output for it depends on.

    Derived from an AutoencoderKLWan config (Wan2.1 layout): every causal convolution has a
    temporal kernel of 3 (it looks 2 frames back at its rate); the norms, the mid-block attention
    and the 1x1 shortcuts are per frame. Walking back from a latent's first pixel frame (at 2^u
    pixel frames per latent, u temporal upsamplings) through conv_out, the up blocks (each
    num_res_blocks + 1 residual blocks of 2 convolutions, and a temporal upsampling whose 3-tap
    time convolution runs at the lower rate), the mid block (2 residual blocks) and conv_in.
    Wan2.1's VAE (4 levels, 2 residual blocks, temporal upsampling in the first two up blocks): 38.
    Decoding from a fresh state at least this many latents before the first latent wanted gives
    that latent's pixels exactly as a decode from the start (tests/test_fast_mode_vae_history.py).
    """
    _wan21_layout(config)
    levels = len(config.dim_mult)
    upsample = list(config.temperal_downsample)[::-1]
    layers = ["conv"] + ["conv"] * 4  # conv_in; the mid block's 2 residual blocks
    for level in range(levels):
        layers += ["conv"] * 2 * (config.num_res_blocks + 1)
        if level != levels - 1 and upsample[level]:
            layers.append("up")
    layers.append("conv")  # conv_out
    latent = 1 << 20  # far from the start: the steady state
    frame = latent * (1 << sum(1 for layer in layers if layer == "up"))
    for layer in reversed(layers):
        frame = frame - 2 if layer == "conv" else frame // 2 - 2
    return latent - frame


def encoder_history_latents(config) -> int:
    """m such that, encoding a video from any frame on (that frame alone, then 4 at a time), its
    latents from the m-th after the first on equal those of an encode from earlier frames.

    Derived like `decoder_history_latents`: walking back from a latent's last pixel frame through
    conv_out, the mid block (2 residual blocks), each level's num_res_blocks residual blocks of 2
    convolutions behind its downsampling, whose temporal one (kernel 3, stride 2) reads the 2
    frames it makes and the frame before them, and conv_in, a latent depends on L pixel frames
    before its last; m = ceil(L / frames per latent). Wan2.1's VAE: L = 112, m = 28.
    """
    _wan21_layout(config)
    levels = len(config.dim_mult)
    layers = ["conv"]  # conv_in
    for level in range(levels):
        layers += ["conv"] * 2 * config.num_res_blocks
        if level != levels - 1 and config.temperal_downsample[level]:
            layers.append("down")
    layers += ["conv"] * 4 + ["conv"]  # the mid block's 2 residual blocks; conv_out
    stride = 1 << sum(1 for layer in layers if layer == "down")
    latent = 1 << 20
    frame = latent
    for layer in reversed(layers):
        frame = frame - 2 if layer == "conv" else 2 * frame - 2
    lookback = latent * stride - frame
    return -(-lookback // stride)


def _wan21_layout(config) -> None:
    if getattr(config, "is_residual", False) or getattr(config, "patch_size", None) is not None:
        raise NotImplementedError("receptive fields derived for the Wan2.1 VAE layout only")
