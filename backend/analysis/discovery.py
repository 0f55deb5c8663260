"""What the patch features know: dense matching and object discovery for the service.

The functions take a loaded network and prepared image tensors (``Prepared.tensor``,
``(1, 3, h, w)``, normalised) and return plain dataclasses that the routes turn into replies.
Feature extraction (:func:`patch_features`) is the only model step of matching, and its result
(:class:`PatchFeatures`, with ``nbytes`` for the map cache) is all :func:`match` needs, so a new
query on a cached pair runs no model. The caller runs the model calls inside
``ModelStep.run`` (inference slot, precision) as for the attention maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainer.model.eva_backbone import as_backbone
from trainer.model.facets import block_facet, check_facet
from trainer.model.lost import DEFAULT_K_PATCHES, box_iou, lost, mask_box
from trainer.model.matching import best_buddies, check_query, query_similarity
from trainer.model.tokencut import tokencut

OBJECT_METHODS = ("lost", "tokencut")


@dataclass
class PatchFeatures:
    """One image's patch descriptors ``(N, D)`` (float32, CPU) of a block facet, on ``grid``."""

    descriptors: torch.Tensor
    grid: tuple[int, int]
    patch_size: int
    layer: int
    facet: str

    def nbytes(self) -> int:
        """Bytes held, for the map cache's budget."""
        return self.descriptors.element_size() * self.descriptors.nelement()


@dataclass
class MatchResult:
    """``/match``'s figures: both grids, the optional similarity map and the best buddies."""

    grid_a: tuple[int, int]
    grid_b: tuple[int, int]
    matches: list[list[float]]
    similarity: list[list[float]] | None = None
    best_match: tuple[int, int] | None = None


@dataclass
class ObjectsResult:
    """``/objects``'s figures: ``boxes`` ``[x0, y0, x1, y1]`` in the uploaded pixels, ``mask``
    the patches of the seed's component."""

    method: str
    boxes: list[list[float]]
    seed: tuple[int, int]
    mask: list[list[bool]]
    grid: tuple[int, int]
    box_iou: float | None = None
    gt_box: list[int] | None = field(default=None)


def patch_features(
    model: nn.Module, tensor: torch.Tensor, layer: int = -1, facet: str = "key"
) -> PatchFeatures:
    """Block ``layer``'s ``facet`` of one prepared image, moved to CPU float32."""
    check_facet(facet)
    if tensor.ndim != 4 or tensor.shape[0] != 1:
        raise ValueError(f"patch_features takes one image (1, 3, h, w), got {tuple(tensor.shape)}")
    model = as_backbone(model)
    with torch.inference_mode():
        desc = block_facet(model, tensor, layer, facet)[0].float().cpu()
    grid = model.grid_size(tensor.shape[-2], tensor.shape[-1])
    return PatchFeatures(desc, grid, int(model.patch_size), layer, facet)


def match(
    features_a: PatchFeatures,
    features_b: PatchFeatures,
    query: tuple[int, int] | None = None,
    top_k: int = 20,
) -> MatchResult:
    """Best buddies of A and B and, with ``query`` (row, col in A's grid), B's similarity map."""
    if query is not None:
        check_query(query, features_a.grid)
    pairs = best_buddies(
        features_a.descriptors, features_b.descriptors, features_a.grid, features_b.grid, top_k
    )
    result = MatchResult(features_a.grid, features_b.grid, pairs)
    if query is not None:
        sim = query_similarity(
            features_a.descriptors, features_b.descriptors, query, features_a.grid, features_b.grid
        )
        flat = int(sim.argmax())
        result.similarity = sim.tolist()
        result.best_match = (flat // features_b.grid[1], flat % features_b.grid[1])
    return result


def discover_objects(
    model: nn.Module,
    tensor: torch.Tensor,
    resized_size: tuple[int, int],
    original_size: tuple[int, int],
    method: str = "lost",
    k_patches: int = DEFAULT_K_PATCHES,
    gt_mask: np.ndarray | None = None,
) -> ObjectsResult:
    """LOST's (or TokenCut's) box on one prepared image, in the uploaded image's pixels.

    ``resized_size`` and ``original_size`` are ``(w, h)``: the model input before its
    patch-multiple crop, and the upload.

    ``gt_mask`` (boolean, uploaded image's ``(h, w)``) adds the box IoU with its bounding box.
    """
    if method not in OBJECT_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(OBJECT_METHODS)}")
    with torch.inference_mode():
        result = lost(model, tensor, k_patches) if method == "lost" else tokencut(model, tensor)
    box = scale_box(result.box, resized_size, original_size)
    out = ObjectsResult(method, [box], result.seed, result.mask.tolist(), result.mask.shape)
    if gt_mask is not None:
        gt = np.asarray(gt_mask, dtype=bool)
        if gt.shape != (original_size[1], original_size[0]):
            raise ValueError(
                f"gt_mask is {gt.shape[1]}x{gt.shape[0]} px; it must match the image's "
                f"{original_size[0]}x{original_size[1]}"
            )
        out.gt_box = mask_box(gt) if gt.any() else None
        out.box_iou = 0.0 if out.gt_box is None else box_iou(box, out.gt_box)
    return out


def scale_box(
    box: Sequence[float], resized_size: tuple[int, int], original_size: tuple[int, int]
) -> list[float]:
    """A box in the resized image's pixels, in the original's (sizes are ``(w, h)``)."""
    sx = original_size[0] / resized_size[0]
    sy = original_size[1] / resized_size[1]
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
