"""The colour composite of the ticked heads, drawn like the paper's Figure 3.

Each patch that some ticked head's mask keeps takes the colour of one head: the head that gives
it the largest share of its own peak attention. That colour is blended once over the photo (so
the photo stays visible however many heads are ticked), each head's region is outlined in its
colour, and the patches no mask keeps are left as they are, a little dimmed.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from app import rendering

ALPHA = 0.45  # the share of the head's colour in a kept pixel
DIM = 0.75  # the brightness of the pixels no ticked head keeps

_PIL_FORMATS = {"image/jpeg": "JPEG", "image/webp": "WEBP"}


def owners(attentions: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per patch, the index (into the ``k`` heads given) of the head it belongs to, or -1.

    ``attentions`` and ``masks`` are ``(k, rows, cols)``; a patch belongs to the head, among
    those whose mask keeps it, with the largest attention relative to that head's maximum.
    """
    peak = attentions.reshape(len(attentions), -1).max(axis=1)
    relative = attentions / np.maximum(peak, 1e-12)[:, None, None]
    score = np.where(masks.astype(bool), relative, -1.0)
    owner = score.argmax(axis=0)
    return np.where(masks.astype(bool).any(axis=0), owner, -1)


def draw(photo: np.ndarray, owner: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """``photo`` (h, w, 3) with the patch ``owner`` map (rows, cols) coloured by ``colors``."""
    h, w = photo.shape[:2]
    cells = Image.fromarray((owner + 1).astype(np.uint8), mode="L")
    label = np.asarray(cells.resize((w, h), Image.Resampling.NEAREST)).astype(np.int64) - 1
    palette = np.vstack([np.zeros((1, 3)), colors.astype(np.float32)])
    tint = palette[label + 1]
    kept = (label >= 0)[..., None]
    base = photo.astype(np.float32)
    out = np.where(kept, base * (1 - ALPHA) + ALPHA * tint, base * DIM)
    edge = np.zeros((h, w), dtype=bool)
    edge[1:, :] |= label[1:, :] != label[:-1, :]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge &= label >= 0
    out[edge] = tint[edge]
    return np.clip(out, 0, 255).astype(np.uint8)


def figure3(result: dict[str, Any]) -> Image.Image | None:
    """The composite of the reply's ``composite_heads``, or None when it has none.

    The picture also replaces the reply's own ``composite`` overlay, so the ZIP of the analysis
    holds what the page shows.
    """
    overlays = result.get("overlays") or {}
    heads = [int(h) for h in result.get("composite_heads") or []]
    colors = result.get("composite_colors") or []
    if not heads or len(colors) != len(heads) or not overlays.get("image"):
        return rendering.optional_overlay(result, "composite")
    photo = np.asarray(rendering.decode_png(overlays["image"]))
    owner = owners(
        np.asarray(result["attentions"], dtype=np.float32)[heads],
        np.asarray(result["masks"], dtype=np.uint8)[heads],
    )
    picture = Image.fromarray(draw(photo, owner, np.asarray(colors)))
    buffer = io.BytesIO()
    picture.save(buffer, format=_PIL_FORMATS.get(str(result.get("overlay_mime")), "PNG"))
    overlays["composite"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return rendering.mark_untrained(picture) if rendering.untrained(result) else picture
