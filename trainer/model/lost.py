"""LOST: a box around the main object from the last block's keys (Simeoni et al. 2021).

The steps, on the patch keys ``k`` (``(N, D)``, heads concatenated, prefix tokens dropped):

1. the affinity ``A = k k^T``;
2. each patch's degree, its number of positive affinities to the other patches; the *seed* is
   the patch of lowest degree (ties: the lowest index);
3. the ``k_patches`` lowest-degree patches that correlate positively with the seed (``A > 0``)
   form the seed set, and ``M = sum over the seed set of A[s, :]``;
4. the box is that of the 4-connected component of ``M > 0`` that holds the seed, with an
   exclusive end, ``[x0, y0, x1, y1]`` in patches; times the patch size in pixels, clipped to
   the image.

If the seed is not in ``M > 0`` (the authors raise then), the box is the seed's own patch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from skimage.measure import label
from torch import nn

from trainer.model.eva_backbone import as_backbone
from trainer.model.facets import block_facet

DEFAULT_K_PATCHES = 100
logger = logging.getLogger(__name__)


@dataclass
class LostResult:
    """LOST's output for one image; ``box`` is ``[x0, y0, x1, y1]`` in pixels of the input."""

    seed: tuple[int, int]
    seed_set: list[int]
    scores: torch.Tensor  # (gh, gw) summed affinities M
    mask: np.ndarray  # (gh, gw) bool, the seed's component of M > 0
    patch_box: list[int]  # [x0, y0, x1, y1] in patches, end exclusive
    box: list[float]


def key_affinity(keys: torch.Tensor) -> torch.Tensor:
    """``A = k k^T`` in float32 for keys ``(N, D)``."""
    k = keys.float()
    return k @ k.T


def patch_degrees(affinity: torch.Tensor) -> torch.Tensor:
    """Each patch's count of positive affinities to the *other* patches, ``(N,)`` int64."""
    positive = affinity > 0
    positive.fill_diagonal_(False)
    return positive.sum(dim=1)


def seed_component(scores: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of ``scores > 0`` holding ``seed``; the seed alone if none."""
    labels = label(scores > 0, connectivity=1)
    cc = labels[seed]
    if cc == 0:
        logger.warning("LOST: the seed %s is outside M > 0; using the seed patch", seed)
        mask = np.zeros(scores.shape, dtype=bool)
        mask[seed] = True
        return mask
    return labels == cc


def mask_box(mask: np.ndarray) -> list[int]:
    """``[x0, y0, x1, y1]`` bounding box (end exclusive) of a non-empty boolean mask."""
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x0, y0, x1, y1]`` boxes (end exclusive); 0 when both are empty."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pixel_box(
    patch_box: Sequence[int], patch_size: int, image_hw: Sequence[int] | None = None
) -> list[float]:
    """A patch box times ``patch_size``, its end clipped to the image ``(h, w)`` when given."""
    box = [float(v * patch_size) for v in patch_box]
    if image_hw is not None:
        box[2] = min(box[2], float(image_hw[1]))
        box[3] = min(box[3], float(image_hw[0]))
    return box


def lost_from_affinity(
    affinity: torch.Tensor,
    grid: tuple[int, int],
    k_patches: int = DEFAULT_K_PATCHES,
    patch_size: int = 1,
    image_hw: Sequence[int] | None = None,
) -> LostResult:
    """LOST's seed, seed set, scores, mask and box from an ``(N, N)`` affinity on ``grid``."""
    if k_patches < 1:
        raise ValueError(f"k_patches must be >= 1, got {k_patches}")
    gh, gw = grid
    if affinity.shape != (gh * gw, gh * gw):
        raise ValueError(f"affinity {tuple(affinity.shape)} does not match the {gh}x{gw} grid")
    affinity = affinity.float()  # bf16 features (precision auto/bf16) are scored in fp32
    order = torch.argsort(patch_degrees(affinity), stable=True)
    seed_index = int(order[0])
    potentials = order[:k_patches]
    seed_set = potentials[affinity[seed_index, potentials] > 0]
    scores = affinity[seed_set].sum(dim=0).reshape(gh, gw)
    seed = (seed_index // gw, seed_index % gw)
    mask = seed_component(scores.cpu().numpy(), seed)
    patch_box = mask_box(mask)
    box = pixel_box(patch_box, patch_size, image_hw)
    return LostResult(seed, seed_set.tolist(), scores, mask, patch_box, box)


@torch.no_grad()
def lost(model: nn.Module, x: torch.Tensor, k_patches: int = DEFAULT_K_PATCHES) -> LostResult:
    """LOST on the last block's keys of one normalised image ``x`` ``(1, 3, H, W)``."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"lost takes one image (1, 3, H, W), got {tuple(x.shape)}")
    model = as_backbone(model)
    keys = block_facet(model, x, -1, "key")[0]
    grid = model.grid_size(x.shape[-2], x.shape[-1])
    return lost_from_affinity(
        key_affinity(keys), grid, k_patches, model.patch_size, (x.shape[-2], x.shape[-1])
    )
