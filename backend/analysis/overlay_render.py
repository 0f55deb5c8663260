"""Overlays drawn for all heads at once with numpy, and encoded as PNG, JPEG or WebP (base64).

The pictures are those of :func:`trainer.model.attention_maps.heat_overlay` and
:func:`~trainer.model.attention_maps.mask_overlay` (same colormap, alpha, dimming and outline),
computed on the patch grid where possible and blended for every head in one array operation.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
from matplotlib import colormaps
from PIL import Image

from trainer.model.attention_maps import DEFAULT_COLORMAP, OUTLINE_RGB

OVERLAY_FORMATS = ("png", "jpeg", "webp")
OVERLAY_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
HEAT_ALPHA = 0.55
MASK_DIM = 0.35
COMPOSITE_ALPHA = 0.5
QUERY_MARK_RGB = (
    0,
    255,
    255,
)  # never produced by an inferno heat overlay (its blue stays below 210)


@lru_cache(maxsize=4)
def _lut(cmap: str) -> np.ndarray:
    """The colormap's 256 RGB entries as float32 0..255 (what ``colormaps[cmap](x)`` looks up)."""
    return (colormaps[cmap](np.arange(256))[:, :3] * 255.0).astype(np.float32)


def encode(pixels: np.ndarray, fmt: str) -> str:
    """Base64 of an ``(h, w, 3)`` uint8 picture in ``fmt`` (png: lossless, compress level 1)."""
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if fmt == "png":
        image.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        image.save(buf, format="JPEG", quality=90)
    elif fmt == "webp":
        image.save(buf, format="WEBP", quality=85, method=0)
    else:
        raise ValueError(
            f"unknown overlay format {fmt!r}; choose one of {', '.join(OVERLAY_FORMATS)}"
        )
    return base64.b64encode(buf.getvalue()).decode("ascii")


def upsample(maps: np.ndarray, patch: int) -> np.ndarray:
    """Nearest upsampling of ``(..., gh, gw)`` grids by ``patch`` along the last two axes."""
    return maps.repeat(patch, axis=-2).repeat(patch, axis=-1)


def heat_batch(
    base: np.ndarray, maps: np.ndarray, patch: int, cmap: str = DEFAULT_COLORMAP
) -> np.ndarray:
    """``(n, h, w, 3)`` uint8: each min-max-scaled map of ``(n, gh, gw)`` blended over ``base``."""
    flat = maps.reshape(maps.shape[0], -1).astype(np.float32)
    lo = flat.min(1, keepdims=True)
    hi = flat.max(1, keepdims=True)
    norm = (flat - lo) / np.maximum(hi - lo, 1e-12)
    idx = np.clip((norm * 256).astype(np.int64), 0, 255).reshape(maps.shape)
    colored = _lut(cmap)[idx] * HEAT_ALPHA  # n, gh, gw, 3
    h, w = base.shape[:2]
    big = colored.repeat(patch, axis=1).repeat(patch, axis=2)[:, :h, :w]
    out = big + base.astype(np.float32) * (1 - HEAT_ALPHA)
    return np.clip(out, 0, 255).astype(np.uint8)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of each ``(..., h, w)`` mask that touch a pixel outside it (the border is outside)."""
    pad = [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)]
    m = np.pad(mask, pad, constant_values=False)
    interior = (
        m[..., 1:-1, 1:-1]
        & m[..., :-2, 1:-1]
        & m[..., 2:, 1:-1]
        & m[..., 1:-1, :-2]
        & m[..., 1:-1, 2:]
    )
    return mask & ~interior


@lru_cache(maxsize=8)
def _outline_templates(patch: int) -> np.ndarray:
    """``(256, patch, patch)`` 2-pixel outlines of one kept patch, indexed by which neighbours are
    dropped (or beyond the border): bits 0-3 the top, bottom, left, right sides (a 2-pixel band
    inwards), bits 4-7 the top-left, top-right, bottom-left, bottom-right diagonals (that corner
    pixel), as :func:`~trainer.model.attention_maps.mask_overlay` draws them."""
    out = np.zeros((256, patch, patch), dtype=bool)
    corners = ((0, 0), (0, patch - 1), (patch - 1, 0), (patch - 1, patch - 1))
    for flags in range(256):
        t = out[flags]
        t[:2] |= bool(flags & 1)
        t[patch - 2 :] |= bool(flags & 2)
        t[:, :2] |= bool(flags & 4)
        t[:, patch - 2 :] |= bool(flags & 8)
        for bit, (r, c) in enumerate(corners):
            t[r, c] |= bool(flags & (16 << bit))
    return out


def _grid_outline(masks: np.ndarray, patch: int) -> np.ndarray:
    """2-pixel outline of upsampled patch masks ``(n, gh, gw)``, patch by patch (``patch >= 4``)."""
    m = np.pad(masks, [(0, 0), (1, 1), (1, 1)], constant_values=False)
    inner = m[:, 1:-1, 1:-1]
    near = (
        m[:, :-2, 1:-1],
        m[:, 2:, 1:-1],
        m[:, 1:-1, :-2],
        m[:, 1:-1, 2:],
        m[:, :-2, :-2],
        m[:, :-2, 2:],
        m[:, 2:, :-2],
        m[:, 2:, 2:],
    )
    flags = sum((inner & ~nb).astype(np.uint8) << bit for bit, nb in enumerate(near))
    cells = _outline_templates(patch)[flags]  # n, gh, gw, p, p
    n, gh, gw = masks.shape
    return cells.transpose(0, 1, 3, 2, 4).reshape(n, gh * patch, gw * patch)


def mask_batch(
    base: np.ndarray,
    masks: np.ndarray,
    patch: int,
    width: int = 2,
    color: tuple[int, int, int] = OUTLINE_RGB,
) -> np.ndarray:
    """``(n, h, w, 3)`` uint8: the kept part of ``base`` bright, the rest dimmed, outlined."""
    masks = masks.astype(bool)
    keep = upsample(masks, patch)
    dimmed = (base.astype(np.float32) * MASK_DIM).astype(np.uint8)
    out = np.where(keep[..., None], base[None], dimmed[None])
    if width == 2 and patch >= 4:
        edge = _grid_outline(masks, patch)
    else:
        edge = _boundary(keep)
        for _ in range(width - 1):
            edge |= _boundary(keep & ~edge)
    out[edge] = color
    return out


def mark_patch(
    pictures: np.ndarray, cell: tuple[int, int], patch: int, width: int = 2
) -> np.ndarray:
    """Outline grid cell ``cell`` (row, col) in ``QUERY_MARK_RGB`` on ``(..., h, w, 3)`` images."""
    r0 = cell[0] * patch
    c0 = cell[1] * patch
    w = max(1, min(width, patch // 2))
    out = pictures.copy()
    for rows, cols in (
        (slice(r0, r0 + w), slice(c0, c0 + patch)),
        (slice(r0 + patch - w, r0 + patch), slice(c0, c0 + patch)),
        (slice(r0, r0 + patch), slice(c0, c0 + w)),
        (slice(r0, r0 + patch), slice(c0 + patch - w, c0 + patch)),
    ):
        out[..., rows, cols, :] = QUERY_MARK_RGB
    return out


def composite(
    base: np.ndarray,
    masks: np.ndarray,
    colors: list[list[int]],
    patch: int,
    alpha: float = COMPOSITE_ALPHA,
) -> np.ndarray:
    """The paper's Figure 3: each mask of ``(k, gh, gw)`` blended in its colour, in turn."""
    out = base.astype(np.float32)
    keep = upsample(masks.astype(bool), patch)
    for mask, color in zip(keep, colors, strict=True):
        tinted = out * (1 - alpha) + alpha * np.asarray(color, dtype=np.float32)
        out = np.where(mask[..., None], tinted, out)
    return np.clip(out, 0, 255).astype(np.uint8)


def pca_picture(rgb: np.ndarray, patch: int) -> np.ndarray:
    """``(h, w, 3)`` uint8 of PCA colours ``(gh, gw, 3)`` in [0, 1], one flat square per patch."""
    pixels = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return pixels.repeat(patch, axis=0).repeat(patch, axis=1)
