"""Text encoder: the official umt5 checkpoint layout through transformers' UMT5, vs the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.wan_common.text import TextEncoder, clean_prompt
from tests.wan_tiny_models import (
    TINY_T5,
    TINY_TEXT_LEN,
    official_t5_state_dict,
    reference_module,
    tiny_umt5,
    write_tiny_tokenizer,
)

PROMPTS = [
    "a person speaking",
    "  a woman &amp;   the camera\n smiling ",
    "the man talks to the camera " * 4,  # longer than the tiny text_len: truncated
]


@pytest.fixture(scope="module")
def official_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    folder = tmp_path_factory.mktemp("t5")
    official = official_t5_state_dict(tiny_umt5(seed=3))
    torch.save(official, folder / "t5.pth")
    return folder / "t5.pth", write_tiny_tokenizer(folder / "tokenizer"), official


@pytest.fixture(scope="module")
def encoder(official_files: tuple[Path, Path, dict]) -> TextEncoder:
    checkpoint, tokenizer_dir, _ = official_files
    text_encoder = TextEncoder.from_official(checkpoint, tokenizer_dir, "cpu", torch.float32, TINY_T5)
    text_encoder.text_len = TINY_TEXT_LEN
    return text_encoder


def test_clean_prompt_unescapes_and_collapses_whitespace() -> None:
    assert clean_prompt("  a &amp;amp;  b\n\tc ") == "a & b c"


def test_encode_zeroes_each_prompt_after_its_tokens(encoder: TextEncoder) -> None:
    embeddings = encoder.encode(PROMPTS)
    assert embeddings.shape == (3, TINY_TEXT_LEN, TINY_T5["d_model"])
    lengths = encoder.tokenizer([clean_prompt(p) for p in PROMPTS], truncation=True,
                                max_length=TINY_TEXT_LEN).input_ids
    for row, ids in zip(embeddings, lengths, strict=True):
        assert torch.count_nonzero(row[len(ids):]) == 0
        assert bool((row[: len(ids)].abs().sum(dim=-1) > 0).all())
    # a prompt's embedding does not depend on the other prompts of the batch
    alone = encoder.encode(PROMPTS[:1])[0]
    assert torch.allclose(alone, embeddings[0], atol=1e-5)


def test_official_file_with_a_wrong_key_is_refused(tmp_path: Path, official_files) -> None:
    _, tokenizer_dir, official = official_files
    broken = dict(official)
    broken["blocks.0.attn.query.weight"] = broken.pop("blocks.0.attn.q.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="blocks.0.attn.query.weight"):
        TextEncoder.from_official(tmp_path / "broken.pth", tokenizer_dir, "cpu", torch.float32, TINY_T5)


def test_save_and_load_pretrained_round_trip(tmp_path: Path, encoder: TextEncoder) -> None:
    encoder.save_pretrained(tmp_path / "text_encoder", tmp_path / "tokenizer")
    loaded = TextEncoder.from_pretrained(tmp_path / "text_encoder", tmp_path / "tokenizer", "cpu", torch.float32)
    loaded.text_len = TINY_TEXT_LEN
    assert torch.equal(loaded.encode(PROMPTS), encoder.encode(PROMPTS))


def test_embeddings_match_the_reference_encoder(
    monkeypatch: pytest.MonkeyPatch, official_files, encoder: TextEncoder
) -> None:
    t5 = reference_module(monkeypatch, "modules.t5")
    tokenizers = reference_module(monkeypatch, "modules.tokenizers")
    _, tokenizer_dir, official = official_files
    reference = t5.T5Encoder(
        vocab=TINY_T5["vocab_size"], dim=TINY_T5["d_model"], dim_attn=TINY_T5["d_model"],
        dim_ffn=TINY_T5["d_ff"], num_heads=TINY_T5["num_heads"], num_layers=TINY_T5["num_layers"],
        num_buckets=TINY_T5["relative_attention_num_buckets"], shared_pos=False, dropout=0.0,
    ).eval()
    reference.load_state_dict(official, strict=True)
    tokenizer = tokenizers.HuggingfaceTokenizer(str(tokenizer_dir), seq_len=TINY_TEXT_LEN, clean="whitespace")
    ids, mask = tokenizer(PROMPTS, return_mask=True, add_special_tokens=True)
    with torch.no_grad():
        context = reference(ids, mask)
    lengths = mask.gt(0).sum(dim=1)

    ours = encoder.encode(PROMPTS)
    for row, expected, length in zip(ours, context, lengths, strict=True):
        scale = expected[:length].abs().max()
        assert (row[:length] - expected[:length]).abs().max() <= 1e-4 * scale
        assert torch.count_nonzero(row[length:]) == 0


def test_the_sharded_form_loads_bit_identical_to_the_official_file(tmp_path: Path, official_files) -> None:
    """scripts/shard_weights.py on a bf16 file in the official layout: the shards keep its names,
    dtypes and values, and the encoder read from them (the .pth gone) computes exactly the same."""
    from safetensors import safe_open

    from model.wan_common.config import T5_CHECKPOINT_FILE
    from model.wan_common.convert_t5 import T5_SHARD_INDEX_FILE
    from scripts.shard_weights import main as shard_weights

    _, tokenizer_dir, official = official_files
    bf16 = {key: tensor.to(torch.bfloat16) for key, tensor in official.items()}
    checkpoint = tmp_path / T5_CHECKPOINT_FILE
    torch.save(bf16, checkpoint)
    from_pth = TextEncoder.from_official(checkpoint, tokenizer_dir, "cpu", torch.bfloat16, TINY_T5)

    assert shard_weights([str(checkpoint), "--shards", "3"]) == 0
    weight_map = json.loads((tmp_path / T5_SHARD_INDEX_FILE).read_text())["weight_map"]
    shards = sorted(set(weight_map.values()))
    assert shards == [f"models_t5_umt5-xxl-enc-bf16-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    stored = {}
    for shard in shards:
        with safe_open(tmp_path / shard, framework="pt") as reader:
            assert {weight_map[key] for key in reader.keys()} == {shard}
            stored.update({key: reader.get_tensor(key) for key in reader.keys()})
    assert stored.keys() == bf16.keys()
    assert all(stored[key].dtype == torch.bfloat16 and torch.equal(stored[key], bf16[key]) for key in bf16)

    checkpoint.unlink()
    from_shards = TextEncoder.from_official(checkpoint, tokenizer_dir, "cpu", torch.bfloat16, TINY_T5)
    for encoder in (from_pth, from_shards):
        encoder.text_len = TINY_TEXT_LEN
    assert torch.equal(from_shards.encode(PROMPTS), from_pth.encode(PROMPTS))
    assert all(torch.equal(a, b) for a, b in zip(from_shards.state_dict().values(),
                                                 from_pth.state_dict().values(), strict=True))


def test_sharding_refuses_more_shards_than_the_tensors_fill(tmp_path: Path) -> None:
    from model.wan_common.checkpoint import write_safetensors_shards

    with pytest.raises(ValueError, match="do not fill 3 shards"):
        write_safetensors_shards([("a", torch.zeros(100)), ("b", torch.zeros(1))], tmp_path, "x.safetensors", 3)
    assert not list(tmp_path.iterdir())


def test_the_prompt_cache_encodes_a_prompt_once_and_keeps_the_last_ones_used():
    from model.wan_common.text import PromptCache

    encoded: list[str] = []

    def encode(prompt: str) -> torch.Tensor:
        encoded.append(prompt)
        return torch.full((1, 2), float(len(encoded)))

    cache = PromptCache(2)
    first = cache.get("a", encode)
    assert cache.get("a", encode) is first and encoded == ["a"]
    cache.get("b", encode)
    cache.get("a", encode)  # "a" used last: "b" is the one to go
    cache.get("c", encode)
    assert encoded == ["a", "b", "c"]
    assert cache.get("a", encode) is first and encoded == ["a", "b", "c"]
    cache.get("b", encode)
    assert encoded == ["a", "b", "c", "b"]
