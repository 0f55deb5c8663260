"""The page's Figure 3 composite against a loop written from its definition, and the mark drawn
on every picture of an untrained model."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from app import composite, rendering

PATCH = 4


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _reply(trained: bool = True, heads: list[int] | None = None, patch: int = PATCH) -> dict:
    rng = np.random.default_rng(3)
    attn = rng.random((3, 3, 4)).astype(np.float32)
    masks = (attn > 0.45).astype(np.uint8)
    masks[:, 0, 0] = 0  # a patch no head keeps
    photo = rng.integers(0, 255, size=(3 * patch, 4 * patch, 3), dtype=np.uint8)
    chosen = [0, 1, 2] if heads is None else heads
    return {
        "trained": trained,
        "attentions": attn.tolist(),
        "masks": masks.tolist(),
        "composite_heads": chosen,
        "composite_colors": [[255, 0, 0], [0, 255, 0], [0, 0, 255]][: len(chosen)],
        "overlay_mime": "image/png",
        "overlays": {"image": _b64(Image.fromarray(photo)), "heads": ["x"]},
    }


def _reference(reply: dict) -> np.ndarray:
    """Patch by patch: the head (among those keeping it) with the largest attention relative to
    its own peak tints the patch once; patches no head keeps are dimmed; then the outlines."""
    photo = np.asarray(rendering.decode_png(reply["overlays"]["image"])).astype(np.float64)
    heads = reply["composite_heads"]
    attn = np.asarray(reply["attentions"])[heads]
    masks = np.asarray(reply["masks"])[heads]
    rows, cols = attn.shape[1:]
    label = np.full((rows * PATCH, cols * PATCH), -1)
    for r in range(rows):
        for c in range(cols):
            best, owner = -1.0, -1
            for k in range(len(heads)):
                share = attn[k, r, c] / attn[k].max()
                if masks[k, r, c] and share > best:
                    best, owner = share, k
            label[r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = owner
    out = photo.copy()
    h, w = label.shape
    for y in range(h):
        for x in range(w):
            k = label[y, x]
            if k < 0:
                out[y, x] = photo[y, x] * composite.DIM
                continue
            colour = np.asarray(reply["composite_colors"][k], dtype=np.float64)
            near = [
                label[yy, xx]
                for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
                if 0 <= yy < h and 0 <= xx < w
            ]
            edge = any(n != k for n in near)
            out[y, x] = (
                colour if edge else photo[y, x] * (1 - composite.ALPHA) + composite.ALPHA * colour
            )
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("heads", [[0, 1, 2], [2], [0, 2]])
def test_the_composite_follows_its_definition(heads):
    reply = _reply(heads=heads)
    picture = composite.figure3(reply)
    np.testing.assert_allclose(np.asarray(picture, dtype=int), _reference(reply), atol=1)
    stored = rendering.decode_png(reply["overlays"]["composite"])  # what the ZIP will hold
    assert np.array_equal(np.asarray(stored), np.asarray(picture))


def test_with_every_head_ticked_the_photo_stays_visible():
    reply = _reply(patch=32)  # 32 px patches: the outlines are a small part of the picture
    photo = np.asarray(rendering.decode_png(reply["overlays"]["image"])).astype(float)
    out = np.asarray(composite.figure3(reply)).astype(float)
    correlation = np.corrcoef(photo.ravel(), out.ravel())[0, 1]
    assert correlation > 0.5  # the photo stays readable under every head's colour


def test_pictures_of_random_weights_are_marked_and_trained_ones_are_not():
    grey = Image.new("RGB", (160, 120), (128, 128, 128))
    reply = {"trained": False, "overlays": {"mean": _b64(grey), "heads": [_b64(grey)]}}
    marked = np.asarray(rendering.mean_overlay(reply))
    corner = marked[-12:, :40]  # lower left: the label's red box
    assert (corner[..., 0] > 150).mean() > 0.3 and (corner[..., 1] < 80).mean() > 0.3
    assert np.array_equal(marked[:60], np.asarray(grey)[:60])  # the rest is untouched
    reply["trained"] = True
    assert np.array_equal(np.asarray(rendering.mean_overlay(reply)), np.asarray(grey))
    heads = rendering.head_gallery({**reply, "trained": False})
    assert not np.array_equal(np.asarray(heads[0][0]), np.asarray(grey))
