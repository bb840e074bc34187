"""Our Wan2.2-S2V transformer against the official implementation (needs WAN_REFERENCE_REPO).

Both are built with the same tiny configuration on CPU in float32; the official random weights
are converted with the project's converter and loaded strictly into ours.
"""

from __future__ import annotations

import math

import pytest
import torch

from model.wan_s2v.convert_transformer import convert_transformer_config, convert_transformer_state_dict
from model.wan_s2v.transformer import WanS2VTransformer3DModel
from tests.wan_reference import reference_module, requires_reference

pytestmark = requires_reference

# The official 14B options, at toy sizes.
TINY_OFFICIAL_CONFIG = {
    "cond_dim": 16,
    "audio_dim": 12,
    "num_audio_token": 4,
    "enable_adain": True,
    "adain_mode": "attn_norm",
    "audio_inject_layers": [0, 2],
    "zero_init": True,
    "zero_timestep": True,
    "enable_motioner": False,
    "add_last_motion": True,
    "enable_framepack": True,
    "framepack_drop_mode": "padd",
    "text_len": 16,
    "in_dim": 16,
    "dim": 48,
    "ffn_dim": 64,
    "freq_dim": 32,
    "out_dim": 16,
    "num_heads": 2,
    "num_layers": 3,
    "eps": 1e-6,
}
TEXT_DIM = 4096  # not configurable in the official model
NUM_WAV2VEC_LAYERS = 25
MOTION_FRAMES = (73, 19)
AUDIO_FRAMES = 16  # -> ceil((16 + 73) / 4) - 19 = 4 latent frames
LATENT_FRAMES, LATENT_HEIGHT, LATENT_WIDTH = 4, 16, 24
RELATIVE_TOLERANCE = 1e-4


def _randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Random weights everywhere, also where the official init puts zeros (injector outputs, head, pose)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if name == "casual_audio_encoder.weights":
                # mixed through SiLU and normalised by their sum: keep them clearly positive
                parameter.copy_(1.0 + 0.2 * noise)
            elif "norm" in name.split(".")[-2] and parameter.ndim == 1 and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            elif parameter.ndim >= 2 and "modulation" not in name and "padding_tokens" not in name:
                fan_in = math.prod(parameter.shape[1:])
                parameter.copy_(noise / math.sqrt(fan_in))
            else:
                parameter.copy_(0.1 * noise if parameter.ndim == 1 else noise / math.sqrt(parameter.shape[-1]))


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, WanS2VTransformer3DModel]:
    model_s2v = reference_module("modules.s2v.model_s2v")
    torch.manual_seed(0)
    reference = model_s2v.WanModel_S2V(**TINY_OFFICIAL_CONFIG).eval()
    _randomise(reference, torch.Generator().manual_seed(1))
    ours = WanS2VTransformer3DModel(**convert_transformer_config(TINY_OFFICIAL_CONFIG)).eval()
    ours.load_state_dict(convert_transformer_state_dict(reference.state_dict()), strict=True)
    return reference, ours


def _inputs(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    latent_shape = (1, 16, LATENT_FRAMES, LATENT_HEIGHT, LATENT_WIDTH)
    return {
        "latents": randn(*latent_shape),
        "timestep": torch.tensor([937.5]),
        "text": randn(1, 11, TEXT_DIM),
        "ref_latents": randn(1, 16, 1, LATENT_HEIGHT, LATENT_WIDTH),
        "motion_latents": randn(1, 16, MOTION_FRAMES[1], LATENT_HEIGHT, LATENT_WIDTH),
        "audio": randn(1, NUM_WAV2VEC_LAYERS, TINY_OFFICIAL_CONFIG["audio_dim"], AUDIO_FRAMES),
        "pose": randn(*latent_shape),
    }


CASES = {
    # name: (drop_motion_frames, with pose, audio zeroed)
    "first clip": (True, False, False),
    "later clip with motion": (False, False, False),
    "pose condition": (False, True, False),
    "unconditional (zero audio)": (False, False, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_official_transformer(models, case: str) -> None:
    reference, ours = models
    drop_motion_frames, with_pose, zero_audio = CASES[case]
    inputs = _inputs(seed=list(CASES).index(case))
    audio = inputs["audio"] * 0.0 if zero_audio else inputs["audio"]
    pose = inputs["pose"] if with_pose else None

    with torch.no_grad():
        expected = reference(
            inputs["latents"],
            t=inputs["timestep"],
            context=list(inputs["text"]),
            seq_len=None,
            ref_latents=inputs["ref_latents"],
            motion_latents=inputs["motion_latents"],
            cond_states=pose if pose is not None else torch.zeros_like(inputs["latents"]),
            audio_input=audio,
            motion_frames=list(MOTION_FRAMES),
            drop_motion_frames=drop_motion_frames,
        )[0]
        actual = ours(
            inputs["latents"],
            inputs["timestep"],
            inputs["text"],
            inputs["ref_latents"],
            inputs["motion_latents"],
            audio,
            pose_latents=pose,
            motion_frames=MOTION_FRAMES,
            drop_motion_frames=drop_motion_frames,
        )[0]

    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    print(f"{case}: max abs error {error:.3g}, output scale {scale:.3g}, relative {error / scale:.3g}")
    assert actual.shape == expected.shape
    assert scale > 0.1, "degenerate reference output"
    assert error <= RELATIVE_TOLERANCE * scale


def test_conditions_change_the_output(models) -> None:
    """The parity cases differ from each other, so matching all of them is not a coincidence."""
    _, ours = models
    inputs = _inputs(seed=0)
    args = (inputs["latents"], inputs["timestep"], inputs["text"], inputs["ref_latents"], inputs["motion_latents"])
    with torch.no_grad():
        base = ours(*args, inputs["audio"])
        variants = {
            "no motion": ours(*args, inputs["audio"], drop_motion_frames=True),
            "pose": ours(*args, inputs["audio"], pose_latents=inputs["pose"]),
            "zero audio": ours(*args, inputs["audio"] * 0.0),
        }
    for name, output in variants.items():
        assert (output - base).abs().max() > 1e-3 * base.abs().max(), name


def test_full_size_structure_maps_one_to_one() -> None:
    """The official 14B transformer's every tensor has a place of the same shape in ours."""
    model_s2v = reference_module("modules.s2v.model_s2v")
    official_config = {
        key: value
        for key, value in reference_module("configs.wan_s2v_14B").s2v_14B.transformer.items()
        if not key.startswith("__")
    }
    with torch.device("meta"):
        reference = model_s2v.WanModel_S2V(**official_config)
        ours = WanS2VTransformer3DModel(**convert_transformer_config(official_config))
        with_defaults = WanS2VTransformer3DModel()

    assert ours.config.num_attention_heads * ours.config.attention_head_dim == official_config["dim"]
    hyper_parameters = {key: value for key, value in ours.config.items() if not key.startswith("_")}
    assert hyper_parameters == {key: value for key, value in with_defaults.config.items() if not key.startswith("_")}
    official_state = reference.state_dict()
    converted = convert_transformer_state_dict(official_state)
    assert len(converted) == len(official_state), "two official tensors map to one name"
    ours_state = ours.state_dict()
    assert {key: tuple(value.shape) for key, value in converted.items()} == {
        key: tuple(value.shape) for key, value in ours_state.items()
    }
    ours.load_state_dict(converted, strict=True, assign=True)
    count = sum(parameter.numel() for parameter in ours.parameters())
    assert count == sum(parameter.numel() for parameter in reference.parameters())
    print(f"Wan2.2-S2V-14B transformer: {count:,} parameters in {len(converted)} tensors")
