"""The Match tab's handlers: the clicked patch, and B's similarity picture with its marker."""

from __future__ import annotations

import numpy as np
from PIL import Image

from app import match_handlers


def test_a_click_maps_to_the_patch_of_the_processed_image():
    # a 200x100 upload at image_size 50 (keep_aspect) is 100x50: patch 10 -> 5 rows x 10 cols
    assert match_handlers.patch_of_click((0, 0), (200, 100), 50, 10) == (0, 0)
    assert match_handlers.patch_of_click((199, 99), (200, 100), 50, 10) == (4, 9)
    assert match_handlers.patch_of_click((45, 61), (200, 100), 50, 10) == (3, 2)


def test_the_best_match_is_boxed_where_the_similarity_peaks(tmp_path):
    path = tmp_path / "b.png"
    Image.new("RGB", (40, 20), (0, 0, 0)).save(path)
    sim = np.zeros((2, 4))
    sim[1, 2] = 1.0
    reply = {"similarity": sim.tolist(), "best_match": [1, 2]}
    out = np.asarray(match_handlers.similarity_picture(str(path), reply))
    assert out.shape == (20, 40, 3)
    assert tuple(out[10, 20]) == match_handlers.MARKER_RGB  # the box's top-left corner
    assert out[15, 25].sum() > out[5, 5].sum()  # the peak is bright on the inferno map


def test_the_status_names_the_match_and_flags_random_weights():
    reply = {
        "model": "m",
        "layer": 11,
        "facet": "key",
        "matches": [[0, 0, 1, 1, 0.9]],
        "grid_a": [2, 3],
        "grid_b": [4, 5],
        "query": [0, 1],
        "best_match": [1, 1],
        "trained": False,
    }
    line = match_handlers.status_line(reply)
    assert "1 best buddies" in line and "[1, 1] of B" in line and "Random weights" in line
