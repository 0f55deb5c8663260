from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.eval.probe_grid import make_probe_grid, pick_evenly, probe_epochs
from trainer.eval.probes import save_attention_probes
from trainer.model.vit import build_vit


def test_pick_evenly_keeps_first_and_last():
    assert pick_evenly([0, 5, 10, 15, 20, 25], 3) == [0, 10, 25]
    assert pick_evenly([0, 1], 5) == [0, 1]
    assert pick_evenly(list(range(10)), 1) == [0]


def test_grid_has_one_row_per_epoch_and_image_and_one_column_per_head(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(
            images / f"{name}.jpg"
        )
    torch.manual_seed(0)
    model = build_vit("vit_tiny", 16)  # 3 heads
    for epoch in (0, 4, 9):
        save_attention_probes(model, images, tmp_path / "probes" / f"epoch{epoch:04d}", size=32)
    assert list(probe_epochs(tmp_path / "probes")) == [0, 4, 9]
    out = make_probe_grid(tmp_path / "probes", tmp_path / "grid.png", rows=2, images=2, cell=20)
    with Image.open(out) as grid:
        # 2 images x 2 epochs = 4 rows of 24 px; label + (image + 3 heads) x 24 px
        assert grid.size == (84 + 4 * 24, 4 * 24)
        first_tile = np.asarray(grid.convert("RGB"))[:20, 84:104]
    with Image.open(tmp_path / "probes" / "epoch0000" / "a.png") as src:
        expected = np.asarray(src.convert("RGB").resize((20, 20), Image.Resampling.BILINEAR))
    assert np.array_equal(first_tile, expected)


def test_no_probe_folders_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no epochNNNN probe folders"):
        probe_epochs(tmp_path)
