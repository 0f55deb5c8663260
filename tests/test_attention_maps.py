"""The paper's mask procedure, Jaccard, and overlay rendering."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference_vit import ref_masks
from trainer.model.attention_maps import (
    heat_overlay,
    jaccard,
    mask_boundary,
    mask_overlay,
    threshold_masks,
)


def test_masks_match_authors_procedure() -> None:
    torch.manual_seed(0)
    attn = torch.rand(6, 7, 9) ** 3
    for t in (0.1, 0.6, 0.9, 1.0):
        assert torch.equal(threshold_masks(attn, t), ref_masks(attn, t))


def test_mask_is_smallest_set_holding_the_mass() -> None:
    attn = torch.tensor([[0.5, 0.3], [0.15, 0.05]])
    assert threshold_masks(attn, 0.5).tolist() == [[True, False], [False, False]]
    assert threshold_masks(attn, 0.6).tolist() == [[True, True], [False, False]]
    assert threshold_masks(attn, 1.0).all()
    torch.manual_seed(1)
    for _ in range(20):
        a = torch.rand(5, 5)
        m = threshold_masks(a, 0.6)
        kept = (a * m).sum() / a.sum()
        assert kept >= 0.6 - 1e-6
        # dropping the smallest kept patch falls below the threshold
        smallest = a[m].min()
        assert (kept - smallest / a.sum()) < 0.6 + 1e-6


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_threshold_out_of_range(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        threshold_masks(torch.rand(2, 2), bad)


def test_jaccard() -> None:
    gt = torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)
    masks = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [1, 0]], [[0, 0], [1, 1]]], dtype=torch.bool)
    assert jaccard(masks, gt).tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def test_overlays_keep_size_and_mark_the_outline() -> None:
    img = Image.fromarray(np.full((16, 24, 3), 200, np.uint8))
    heat = heat_overlay(img, np.random.rand(16, 24))
    assert heat.size == (24, 16) and heat.mode == "RGB"
    mask = np.zeros((16, 24), bool)
    mask[4:12, 6:18] = True
    edge = mask_boundary(mask)
    assert edge.sum() == 2 * 8 + 2 * 12 - 4 and not edge[6, 10]
    out = np.asarray(mask_overlay(img, mask, width=1))
    assert tuple(out[4, 6]) != (200, 200, 200)  # outline colour
    assert tuple(out[8, 10]) == (200, 200, 200)  # kept interior untouched
    assert out[0, 0].max() < 200  # outside dimmed
