from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.eval.probe_grid import (
    HEADER_HEIGHT,
    LABEL_WIDTH,
    column_headers,
    make_probe_grid,
    pick_evenly,
    probe_epochs,
    row_label,
)
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
        # a header row, then 2 images x 2 epochs = 4 rows of 24 px; label + (image + 3 heads)
        assert grid.size == (84 + 4 * 24, HEADER_HEIGHT + 4 * 24)
        pixels = np.asarray(grid.convert("RGB"))
    first_tile = pixels[HEADER_HEIGHT : HEADER_HEIGHT + 20, 84:104]
    with Image.open(tmp_path / "probes" / "epoch0000" / "a.png") as src:
        expected = np.asarray(src.convert("RGB").resize((20, 20), Image.Resampling.BILINEAR))
    assert np.array_equal(first_tile, expected)
    header = pixels[:HEADER_HEIGHT]
    assert not (header[:, :LABEL_WIDTH] < 128).any()  # no header over the row labels
    for column in range(4):  # a written header over each tile column: the image and 3 heads
        x = LABEL_WIDTH + column * 24
        assert (header[:, x : x + 24] < 128).any(), column
    labels = pixels[HEADER_HEIGHT:, :LABEL_WIDTH]
    for row in range(4):  # every row is labelled
        assert (labels[row * 24 : (row + 1) * 24] < 128).any(), row


def test_rows_are_labelled_as_the_folders_and_heads_as_the_files(tmp_path):
    for epoch in (0, 9, 27, 12345):
        folder = tmp_path / f"epoch{epoch:04d}"
        folder.mkdir()
        assert row_label(epoch) == folder.name  # the loop's own folder naming
    assert {row_label(e) for e in probe_epochs(tmp_path)} == {p.name for p in tmp_path.iterdir()}
    assert column_headers(3) == ["image", "head 0", "head 1", "head 2"]  # as in a_head0_heat.png


def test_no_probe_folders_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no epochNNNN probe folders"):
        probe_epochs(tmp_path)
