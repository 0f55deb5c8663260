"""Pictures of ``/match`` (both images, best buddies as lines) and ``/objects`` (box, seed)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from backend.analysis.block_maps import composite_colors
from backend.analysis.overlay_render import encode

SEED_RGB = (255, 64, 64)
BOX_RGB = (64, 255, 64)
GT_RGB = (255, 255, 255)


def match_overlay(a: np.ndarray, b: np.ndarray, matches: list[list[float]], patch: int) -> str:
    """A and B side by side (B to the right), each pair a line in its own colour; base64 PNG."""
    h = max(a.shape[0], b.shape[0])
    canvas = Image.new("RGB", (a.shape[1] + b.shape[1], h))
    canvas.paste(Image.fromarray(a), (0, 0))
    canvas.paste(Image.fromarray(b), (a.shape[1], 0))
    draw = ImageDraw.Draw(canvas)
    half = patch / 2
    for (ra, ca, rb, cb, _), color in zip(matches, composite_colors(len(matches)), strict=True):
        pa = (ca * patch + half, ra * patch + half)
        pb = (a.shape[1] + cb * patch + half, rb * patch + half)
        draw.line([pa, pb], fill=tuple(color), width=2)
        for x, y in (pa, pb):
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=tuple(color), width=2)
    return encode(np.asarray(canvas), "png")


def objects_overlay(
    picture: np.ndarray,
    box: list[float],
    seed: tuple[int, int],
    patch: int,
    scale: tuple[float, float],
    gt_box: list[int] | None = None,
) -> str:
    """The processed photo with the box (``box`` in uploaded pixels, ``scale`` = uploaded /
    processed), the seed patch and the ground-truth box when given; base64 PNG."""
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    sx, sy = scale
    draw.rectangle([box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy], outline=BOX_RGB, width=3)
    if gt_box is not None:
        gx0, gy0, gx1, gy1 = gt_box
        draw.rectangle([gx0 / sx, gy0 / sy, gx1 / sx, gy1 / sy], outline=GT_RGB, width=1)
    r, c = seed
    draw.rectangle(
        [c * patch, r * patch, (c + 1) * patch, (r + 1) * patch], outline=SEED_RGB, width=2
    )
    return encode(np.asarray(image), "png")
