"""Tiny random-weight InfiniteTalk components for the tests, written as the published ones are laid out.

No real weights can be downloaded here; these have the published structure at toy sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Wav2Vec2ForPreTraining

from tests.reference_harness import write_tiny_wav2vec2


def write_tiny_chinese_wav2vec2(folder: Path, seed: int = 0, hidden_size: int = 32, layers: int = 3) -> Path:
    """A wav2vec2 folder shaped like `TencentGameMate/chinese-wav2vec2-base` (a pre-training
    checkpoint with group-normalised convolutions and post-layer-norm transformer layers, the
    standard 320-sample hop), at toy sizes."""
    return write_tiny_wav2vec2(
        folder, Wav2Vec2ForPreTraining, seed, conv_channels=16, hidden_size=hidden_size, num_hidden_layers=layers,
        intermediate_size=48, codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8,
    )


# --- transformer -------------------------------------------------------------------------------

# The reference's `WanModel` arguments at toy sizes (the published model: dim 5120, 40 heads, 40
# layers, in_dim 36). The image tokens (257 x 1280, CLIP ViT-H/14), the 512 text tokens and the
# audio rows (12 layers x 768, chinese-wav2vec2-base) keep their published sizes: the reference
# fixes them.
TINY_TRANSFORMER: dict[str, Any] = {
    "model_type": "i2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 12,
    "dim": 48,
    "ffn_dim": 64,
    "freq_dim": 16,
    "text_dim": 24,
    "out_dim": 4,
    "num_heads": 4,
    "num_layers": 2,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "audio_window": 5,
    "intermediate_dim": 16,
    "output_dim": 8,
    "context_tokens": 4,
    "vae_scale": 4,
    "norm_input_visual": True,
    "norm_output_audio": True,
}
IMAGE_TOKENS, IMAGE_DIM = 257, 1280
AUDIO_LAYERS, AUDIO_CHANNELS = 12, 768


def transformer_inputs(
    latent_frames: int = 3, height: int = 8, width: int = 12, speakers: int = 1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random inputs of one denoising step at the tiny sizes: noisy latents and the I2V condition,
    umT5-like text states, CLIP-like image tokens, audio windows per speaker."""
    generator = torch.Generator().manual_seed(seed)
    config = TINY_TRANSFORMER
    video_frames = 1 + config["vae_scale"] * (latent_frames - 1)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    return {
        "latents": draw(config["out_dim"], latent_frames, height, width),
        "condition": draw(config["in_dim"] - config["out_dim"], latent_frames, height, width),
        "text": draw(7, config["text_dim"]),
        "image": draw(1, IMAGE_TOKENS, IMAGE_DIM),
        "audio": draw(speakers, video_frames, config["audio_window"], AUDIO_LAYERS, AUDIO_CHANNELS),
    }


def two_speaker_regions(height: int, width: int) -> torch.Tensor:
    """[3, height, width] masks as the reference's default split lays them out: speaker 1 in the
    left half, speaker 2 in the right, then the background (everything else)."""
    regions = torch.zeros(3, height, width)
    regions[0, 1 : height - 1, 1 : width // 2 - 1] = 1
    regions[1, 1 : height - 1, width // 2 + 1 : width - 1] = 1
    regions[2] = (regions[0] + regions[1] == 0).float()
    return regions


# --- the published layouts, end to end ----------------------------------------------------------

# The VAE, umT5 and CLIP files carry no config (the worker assumes the 14B ones); a test tells the
# worker these tiny ones. The transformer's text width is umT5's, its image width CLIP's 1280 and
# its in/out channels the VAE's (2 * z + 4 in, z out).
E2E_VAE = {
    "base_dim": 2, "z_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 0,
    "latents_mean": [0.1, -0.2, 0.3, -0.1], "latents_std": [1.2, 0.8, 1.5, 1.0],
}
E2E_T5 = {
    "vocab_size": 48, "d_model": TINY_TRANSFORMER["text_dim"], "d_kv": 8, "d_ff": 32, "num_heads": 2,
    "num_layers": 1, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0,
}
# CLIP's width is fixed by the transformer's image projection (1280); two blocks, of which the
# worker uses the first (it reads the states before the last block)
E2E_CLIP_TOWER = {
    "image_size": 28, "patch_size": 14, "hidden_size": IMAGE_DIM, "intermediate_size": 32,
    "num_attention_heads": 2, "num_hidden_layers": 2, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
}
E2E_WAV2VEC = {"hidden_size": 32, "layers": 3}

_AUDIO_PUBLISHED = ("audio_proj.", "norm_x.", "audio_cross_attn.")


def _published_names(layers: int) -> list[str]:
    """Every parameter name the reference's `WanModel` (I2V, with InfiniteTalk's audio) may have."""
    wb = ("weight", "bias")
    names = [f"{top}.{p}" for top in ("patch_embedding", "text_embedding.0", "text_embedding.2", "time_embedding.0",
                                     "time_embedding.2", "time_projection.1", "head.head") for p in wb]
    names += ["head.modulation"]
    names += [f"img_emb.proj.{index}.{p}" for index in (0, 1, 3, 4) for p in wb]
    names += [f"audio_proj.{layer}.{p}" for layer in ("proj1", "proj1_vf", "proj2", "proj3", "norm") for p in wb]
    for i in range(layers):
        block = f"blocks.{i}."
        names += [f"{block}self_attn.{part}.{p}" for part in ("q", "k", "v", "o") for p in wb]
        names += [f"{block}cross_attn.{part}.{p}" for part in ("q", "k", "v", "o", "k_img", "v_img") for p in wb]
        names += [f"{block}{attn}.{norm}.weight" for attn in ("self_attn", "cross_attn")
                  for norm in ("norm_q", "norm_k")]
        names += [f"{block}cross_attn.norm_k_img.weight", f"{block}modulation"]
        names += [f"{block}{part}.{p}" for part in ("norm3", "ffn.0", "ffn.2", "norm_x") for p in wb]
        names += [f"{block}audio_cross_attn.{part}.{p}" for part in ("q_linear", "kv_linear", "proj") for p in wb]
    return names


def published_transformer_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s (an InfiniteTalkTransformer3DModel) weights under the reference's names."""
    from model.infinitetalk.convert_transformer import convert_transformer_key

    ours_to_published = {}
    for name in _published_names(sum(1 for _ in model.get_submodule("blocks").children())):
        try:
            ours_to_published[convert_transformer_key(name)] = name
        except KeyError:
            continue
    state = model.state_dict()
    missing = sorted(set(state) - set(ours_to_published))
    assert not missing, f"no published name for {missing[:5]}"
    return {ours_to_published[key]: tensor.clone() for key, tensor in state.items()}


def tiny_infinitetalk_transformer(seed: int = 0, audio_layers: int = 3, audio_channels: int = 32):
    from model.infinitetalk.convert_transformer import convert_transformer_config
    from model.infinitetalk.transformer import InfiniteTalkTransformer3DModel

    torch.manual_seed(seed)
    model = InfiniteTalkTransformer3DModel(
        **convert_transformer_config(TINY_TRANSFORMER), audio_layers=audio_layers, audio_channels=audio_channels
    ).eval()
    with torch.no_grad():  # some layers start at zero; make every weight matter
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def official_clip_state_dict(tower: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random CLIP vision tower under the official `CLIPModel`'s names (`visual.*`), all its blocks."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**tower)).eval()
    state = {key.removeprefix("vision_model."): value for key, value in model.state_dict().items()}
    official = {
        "visual.cls_embedding": state["embeddings.class_embedding"].reshape(1, 1, -1),
        "visual.pos_embedding": state["embeddings.position_embedding.weight"][None],
        "visual.patch_embedding.weight": state["embeddings.patch_embedding.weight"],
        "visual.head": torch.randn(tower["hidden_size"], 8),
    }
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for p in ("weight", "bias"):
            official[f"visual.{theirs}.{p}"] = state[f"{ours}.{p}"]
    parts = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
             "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2"}
    for i in range(tower["num_hidden_layers"]):
        layer, block = f"encoder.layers.{i}.", f"visual.transformer.{i}."
        for p in ("weight", "bias"):
            official[f"{block}attn.to_qkv.{p}"] = torch.cat(
                [state[f"{layer}self_attn.{q}_proj.{p}"] for q in ("q", "k", "v")]
            )
            for ours, theirs in parts.items():
                official[f"{block}{theirs}.{p}"] = state[f"{layer}{ours}.{p}"]
    return {key: value.clone().contiguous() for key, value in official.items()}


def lightx2v_lora(published: dict[str, torch.Tensor], rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoRA in ComfyUI's spelling, as lightx2v's is published: pairs for every block's attention and
    feed-forward linears, a bias diff, a zero norm diff and alpha keys (which the reference does not read)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, weight in published.items():
        module = name.removesuffix(".weight")
        if not name.endswith(".weight") or weight.dim() != 2 or not any(
            f".{kind}." in name for kind in ("self_attn", "cross_attn", "ffn")
        ) or "_img" in name:
            continue
        out_features, in_features = weight.shape
        down = torch.randn(rank, in_features, generator=generator) * 0.3
        tensors[f"diffusion_model.{module}.lora_down.weight"] = down
        tensors[f"diffusion_model.{module}.lora_up.weight"] = torch.randn(out_features, rank, generator=generator) * 0.3
        tensors[f"diffusion_model.{module}.alpha"] = torch.tensor(float(rank))
    tensors["diffusion_model.blocks.0.self_attn.q.diff_b"] = torch.randn(
        published["blocks.0.self_attn.q.bias"].shape, generator=generator
    )
    tensors["diffusion_model.blocks.0.norm3.diff"] = torch.zeros_like(published["blocks.0.norm3.weight"])
    return tensors


def write_published_layouts(models: Path, lora: bool = True, transformer_shards: int = 2) -> Path:
    """MODEL_DIR with each published repository in its download folder, marked finished:
    Wan2.1-I2V-14B-480P (the transformer in `transformer_shards` files, VAE, umT5 and its tokenizer,
    CLIP), chinese-wav2vec2-base, InfiniteTalk (single/ and multi/) and, with `lora`, lightx2v's LoRA."""
    import json

    from safetensors.torch import save_file

    from model.infinitetalk import declaration
    from model.weights import FINISHED_MARKER_NAME
    from tests.wan_tiny_models import (
        official_t5_state_dict,
        official_vae_state_dict,
        tiny_umt5,
        tiny_vae,
        write_tiny_tokenizer,
    )

    def finished(spec) -> Path:
        folder = models / spec.folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FINISHED_MARKER_NAME).write_text(json.dumps({"repo_id": spec.repo_id, "revision": spec.revision}))
        return folder

    published = published_transformer_state_dict(tiny_infinitetalk_transformer(
        audio_layers=E2E_WAV2VEC["layers"], audio_channels=E2E_WAV2VEC["hidden_size"]
    ))
    audio = {key: value for key, value in published.items() if key.startswith(_AUDIO_PUBLISHED)
             or any(f".{part}." in key for part in ("norm_x", "audio_cross_attn"))}
    base = finished(declaration.BASE_WEIGHTS)
    _write_shards_by_count([(key, value) for key, value in published.items() if key not in audio], base,
                           "diffusion_pytorch_model", transformer_shards)
    (base / "config.json").write_text(json.dumps(TINY_TRANSFORMER))
    torch.save(official_vae_state_dict(tiny_vae(config=E2E_VAE)), base / "Wan2.1_VAE.pth")
    torch.save(official_t5_state_dict(tiny_umt5(config=E2E_T5)), base / "models_t5_umt5-xxl-enc-bf16.pth")
    write_tiny_tokenizer(base / "google" / "umt5-xxl")
    torch.save(official_clip_state_dict(E2E_CLIP_TOWER), base / declaration.CLIP_CHECKPOINT_FILE)

    write_tiny_chinese_wav2vec2(finished(declaration.WAV2VEC_WEIGHTS), hidden_size=E2E_WAV2VEC["hidden_size"],
                                layers=E2E_WAV2VEC["layers"])
    infinitetalk = finished(declaration.INFINITETALK_WEIGHTS)
    generator = torch.Generator().manual_seed(9)
    for file, tensors in (
        (declaration.SINGLE_SPEAKER_FILE, audio),
        (declaration.TWO_SPEAKER_FILE, {key: torch.randn(value.shape, generator=generator) * 0.2
                                        for key, value in audio.items()}),
    ):
        (infinitetalk / file).parent.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous() for key, value in tensors.items()}, str(infinitetalk / file))
    if lora:
        save_file(lightx2v_lora(published), str(finished(declaration.LORA_WEIGHTS) / declaration.LORA_FILE))
    return models


def _write_shards_by_count(tensors: list[tuple[str, torch.Tensor]], folder: Path, stem: str, shards: int) -> None:
    """`tensors` in `shards` files named and indexed as the Hub's sharded checkpoints are, split by
    count (a tiny model's one large embedding would leave a split by size with empty shards)."""
    import json

    from safetensors.torch import save_file

    names = [f"{stem}-{number:05d}-of-{shards:05d}.safetensors" for number in range(1, shards + 1)]
    weight_map = {key: names[i * shards // len(tensors)] for i, (key, _) in enumerate(tensors)}
    for name in names:
        save_file({key: value.contiguous() for key, value in tensors if weight_map[key] == name}, str(folder / name))
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
