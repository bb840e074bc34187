"""InfiniteTalk's frame layout (model/infinitetalk/layout.py): the size buckets, covering and
cropping the portrait, and the two speakers' regions, against the reference's own tables,
`resize_and_centercrop` and mask statements (INFINITETALK_REFERENCE_REPO)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.infinitetalk.config import SPEAKER_INSET
from model.infinitetalk.layout import SIZE_BUCKETS, bucket_size, cover_and_crop, speaker_regions
from tests.infinitetalk_reference import (
    infinitetalk_module,
    reference_bucket_size,
    reference_cover_and_crop,
    reference_speaker_masks,
    requires_infinitetalk,
)

PORTRAITS = [(480, 640), (1080, 1920), (1000, 1000), (300, 1200), (2000, 500), (853, 640)]
BOXES = {"person1": [10, 5, 90, 70], "person2": [20, 80, 100, 150]}


def test_the_closest_aspect_ratio_wins_and_unknown_buckets_are_named():
    assert bucket_size(1000, 1000, "infinitetalk-480") == (640, 640)
    assert bucket_size(1080, 1920, "infinitetalk-480") == (448, 896)  # 0.5625: closest to 0.50
    assert bucket_size(1920, 1080, "infinitetalk-720") == (1280, 704)  # 1.78: closest to 1.82
    with pytest.raises(ValueError, match="infinitetalk-1080"):
        bucket_size(10, 10, "infinitetalk-1080")


def test_cover_and_crop_fills_the_target_from_the_centre():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    image[:, 100:200] = 255  # a white middle third
    out = cover_and_crop(image, (100, 100))
    assert out.shape == (100, 100, 3)
    assert out.min() == 255  # only the middle third is kept


def test_default_speaker_regions_are_the_inset_halves_and_the_rest_is_background():
    regions = speaker_regions((100, 200), (100, 200), (100, 200))
    rows = slice(int(100 * SPEAKER_INSET), int(100 * (1 - SPEAKER_INSET)))
    assert regions[0, rows, 5:95].min() == 1 and regions[0, :, 100:].max() == 0
    assert regions[1, rows, 105:195].min() == 1 and regions[1, :, :100].max() == 0
    assert torch.equal(regions[2], ((regions[0] + regions[1]) == 0).float())
    with pytest.raises(ValueError, match="two boxes, got 1"):
        speaker_regions((100, 200), (100, 200), (10, 20), boxes=[[0, 0, 5, 5]])


@requires_infinitetalk
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_size_buckets_are_the_references():
    tables = infinitetalk_module("wan.utils.multitalk_utils")
    assert SIZE_BUCKETS["infinitetalk-480"] == {key: tuple(value[0]) for key, value in tables.ASPECT_RATIO_627.items()}
    assert SIZE_BUCKETS["infinitetalk-720"] == {key: tuple(value[0]) for key, value in tables.ASPECT_RATIO_960.items()}
    for height, width in PORTRAITS:
        for bucket in SIZE_BUCKETS:
            assert bucket_size(height, width, bucket) == reference_bucket_size(height, width, bucket)


@requires_infinitetalk
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_covering_and_speaker_masks_match_the_reference():
    image = (np.random.default_rng(0).random((101, 157, 3)) * 255).astype(np.uint8)
    expected = reference_cover_and_crop(Image.fromarray(image), (64, 96))[0, :, 0].permute(1, 2, 0).numpy()
    assert np.array_equal(cover_and_crop(image, (64, 96)), expected)
    for boxes in (None, BOXES):
        expected_masks = reference_speaker_masks((101, 157), (64, 96), (8, 12), boxes)
        assert torch.equal(speaker_regions((101, 157), (64, 96), (8, 12), boxes), expected_masks), boxes
