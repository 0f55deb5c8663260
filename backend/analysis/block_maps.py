"""What the model computes for one prepared image: block ``layer``'s attention rows and its PCA.

:func:`compute_block_maps` is the only torch step of an analysis; its :class:`RawMaps` is what the
map cache keeps. Rows cover every token (prefix tokens first); :meth:`RawMaps.cls_maps` and
:meth:`RawMaps.query_maps` drop the ``num_prefix`` prefix columns and lay the patches on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from trainer.model.block_attention import block_attention, prefix_tokens
from trainer.model.feature_pca import patch_pca


@dataclass
class RawMaps:
    """Block ``layer``'s CLS row (and a query patch's row) over all tokens, optionally the PCA."""

    layer: int
    grid: tuple[int, int]
    num_prefix: int
    cls_rows: np.ndarray  # heads, T float32
    query: tuple[int, int] | None = None
    query_rows: np.ndarray | None = None  # heads, T float32
    pca_rgb: np.ndarray | None = None  # gh, gw, 3 float32 in [0, 1]
    pca_fg: np.ndarray | None = None  # gh, gw bool

    def _grid(self, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows[:, self.num_prefix :]).reshape(rows.shape[0], *self.grid)

    def cls_maps(self) -> np.ndarray:
        """CLS-to-patch attention per head, ``(heads, gh, gw)`` (prefix columns dropped)."""
        return self._grid(self.cls_rows)

    def query_maps(self) -> np.ndarray | None:
        """The query patch's attention to every patch per head, ``(heads, gh, gw)``, or None."""
        return None if self.query_rows is None else self._grid(self.query_rows)

    @property
    def nbytes(self) -> int:
        arrays = (self.cls_rows, self.query_rows, self.pca_rgb, self.pca_fg)
        return sum(a.nbytes for a in arrays if a is not None)


def query_token(num_prefix: int, grid: tuple[int, int], query: tuple[int, int]) -> int:
    """Index in the token sequence of patch ``query`` = (row, col)."""
    return num_prefix + query[0] * grid[1] + query[1]


def compute_block_maps(
    model: torch.nn.Module,
    tensor: torch.Tensor,
    layer: int,
    query: tuple[int, int] | None,
    pca: bool,
) -> RawMaps:
    """Run ``model`` on one normalised ``(1, 3, h, w)`` image up to (resolved) block ``layer``.

    The caller provides ``inference_mode``, autocast and the device placement.
    """
    patch = model.patch_size
    grid = (tensor.shape[-2] // patch, tensor.shape[-1] // patch)
    num_prefix = prefix_tokens(model)
    rows = [0] if query is None else [0, query_token(num_prefix, grid, query)]
    out = block_attention(model, tensor, layer, rows, with_tokens=pca)
    attn = out.attention[0].float().cpu().numpy()  # heads, Q, T
    raw = RawMaps(layer, grid, num_prefix, np.ascontiguousarray(attn[:, 0]), query)
    if query is not None:
        raw.query_rows = np.ascontiguousarray(attn[:, 1])
    if pca and out.tokens is not None:
        picture = patch_pca(out.tokens[0, num_prefix:].float().cpu(), grid)
        raw.pca_rgb = picture.rgb.numpy()
        raw.pca_fg = picture.foreground.numpy()
    return raw


def composite_colors(count: int) -> list[list[int]]:
    """``count`` distinct saturated colours, evenly spaced hues (the authors' ``random_colors``)."""
    colors = []
    for i in range(count):
        hsv = Image.new("HSV", (1, 1), (round(255 * i / max(count, 1)) % 256, 255, 255))
        colors.append([int(c) for c in hsv.convert("RGB").getpixel((0, 0))])
    return colors
