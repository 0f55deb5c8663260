"""The explorer's extra views of one analysis: query patch maps, colour composite, PCA.

All are derived from a cached :class:`~backend.analysis.block_maps.RawMaps` and the
thresholded masks, so a new threshold or head choice redraws them without running the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.analysis.block_maps import RawMaps, composite_colors
from backend.analysis.inference import MapSet
from backend.analysis.overlay_render import (
    composite,
    encode,
    heat_batch,
    mark_patch,
    mask_batch,
    pca_picture,
)
from backend.errors import InvalidParameter


@dataclass
class Extras:
    """What the reply adds to the CLS maps (None: not asked for)."""

    heads: list[int]
    query: tuple[int, int] | None = None
    query_attentions: np.ndarray | None = None  # heads, gh, gw
    query_mean: np.ndarray | None = None  # gh, gw
    composite_colors: list[list[int]] | None = None
    pca_rgb: np.ndarray | None = None  # gh, gw, 3
    pca_fg: np.ndarray | None = None  # gh, gw bool


def check_query(query: tuple[int, int] | None, grid: tuple[int, int]) -> tuple[int, int] | None:
    """``query`` if it is a patch of ``grid`` = (gh, gw), else 422 stating the grid."""
    if query is None:
        return None
    row, col = query
    gh, gw = grid
    if not (0 <= row < gh and 0 <= col < gw):
        raise InvalidParameter(
            f"query ({row}, {col}) is outside the {gh}x{gw} patch grid of this image; "
            f"use row 0 to {gh - 1} and col 0 to {gw - 1}"
        )
    return (row, col)


def check_heads(heads: list[int] | None, num_heads: int) -> list[int]:
    """The composite's heads (default all), or 422 stating the valid range."""
    if heads is None:
        return list(range(num_heads))
    bad = [h for h in heads if not 0 <= h < num_heads]
    if not heads or bad or len(set(heads)) != len(heads):
        what = "no head" if not heads else (f"head {bad[0]}" if bad else "a head twice")
        raise InvalidParameter(
            f"heads names {what}; choose distinct heads from 0 to {num_heads - 1} "
            f"(this model has {num_heads} heads)"
        )
    return list(heads)


def derive_extras(raw: RawMaps, heads: list[int], with_composite: bool, with_pca: bool) -> Extras:
    out = Extras(heads=heads, query=raw.query)
    if with_pca:
        out.pca_rgb = raw.pca_rgb
        out.pca_fg = raw.pca_fg
    query_maps = raw.query_maps()
    if query_maps is not None:
        out.query_attentions = query_maps
        out.query_mean = query_maps.mean(0)
    if with_composite:
        out.composite_colors = composite_colors(len(heads))
    return out


def static_overlays(
    image: np.ndarray, maps: MapSet, extras: Extras, patch: int, fmt: str
) -> dict[str, object]:
    """The pictures a new threshold or head choice leaves as they are (the map cache keeps them):
    the image, CLS heat maps and mean, query heat maps and mean (patch outlined), the PCA and
    its foreground."""
    stack = [maps.attentions, maps.mean_attention[None]]
    if extras.query_attentions is not None and extras.query_mean is not None:
        stack += [extras.query_attentions, extras.query_mean[None]]
    heats = heat_batch(image, np.concatenate(stack), patch)
    n = maps.attentions.shape[0]
    out: dict[str, object] = {
        "image": encode(image, fmt),
        "heads": [encode(h, fmt) for h in heats[:n]],
        "mean": encode(heats[n], fmt),
    }
    if extras.query is not None and len(heats) > n + 1:
        query = mark_patch(heats[n + 1 :], extras.query, patch)
        out["query_heads"] = [encode(h, fmt) for h in query[:-1]]
        out["query_mean"] = encode(query[-1], fmt)
    if extras.pca_rgb is not None and extras.pca_fg is not None:
        out["pca"] = encode(pca_picture(extras.pca_rgb, patch), fmt)
        out["pca_fg"] = encode(mask_batch(image, extras.pca_fg[None], patch)[0], fmt)
    return out


def threshold_overlays(
    image: np.ndarray, masks: np.ndarray, extras: Extras, patch: int, fmt: str
) -> dict[str, object]:
    """The pictures that follow the threshold and the heads: each head's mask, and the composite."""
    out: dict[str, object] = {"masks": [encode(m, fmt) for m in mask_batch(image, masks, patch)]}
    if extras.composite_colors is not None:
        out["composite"] = encode(
            composite(image, masks[extras.heads], extras.composite_colors, patch), fmt
        )
    return out
