"""Attention masks, IoU and overlays, shared by the trainer's probes and the service.

The mask procedure is the paper's (and the authors' visualize_attention.py): per head,
sort the CLS-to-patch attention, normalise it to sum 1, take the cumulative sum in
ascending order and keep the patches whose cumulative sum exceeds ``1 - threshold``, i.e.
the smallest set of patches that holds ``threshold`` of the head's attention mass.
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

DEFAULT_COLORMAP = "inferno"
OUTLINE_RGB = (0, 255, 170)


def threshold_masks(attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """Boolean masks keeping ``threshold`` of each map's mass; ``attn`` is ``(..., gh, gw)``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    shape = attn.shape
    flat = attn.reshape(-1, shape[-2] * shape[-1]).float()
    val, idx = torch.sort(flat, dim=1)
    val = val / val.sum(dim=1, keepdim=True)
    keep_sorted = torch.cumsum(val, dim=1) > (1 - threshold)
    keep = torch.empty_like(keep_sorted)
    keep.scatter_(1, idx, keep_sorted)
    return keep.reshape(shape)


def jaccard(masks: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of each of ``masks`` ``(..., H, W)`` against one boolean ``gt`` ``(H, W)``."""
    masks = masks.bool()
    gt = gt.bool().expand_as(masks)
    inter = (masks & gt).flatten(-2).sum(-1).float()
    union = (masks | gt).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def upsample_nearest(maps: np.ndarray, factor: int) -> np.ndarray:
    """Repeat each patch value ``factor`` times along both image axes (the authors' choice)."""
    return maps.repeat(factor, axis=-2).repeat(factor, axis=-1)


def heat_overlay(
    image: Image.Image, attn_map: np.ndarray, alpha: float = 0.55, cmap: str = DEFAULT_COLORMAP
) -> Image.Image:
    """Blend a min-max-normalised map (already at image resolution) over ``image``."""
    a = attn_map.astype(np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    colored = colormaps[cmap](a)[..., :3] * 255.0
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = (1 - alpha) * base + alpha * colored
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a pixel outside it (4-neighbourhood), image border included."""
    m = np.pad(mask.astype(bool), 1, constant_values=False)
    interior = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask.astype(bool) & ~interior


def mask_overlay(
    image: Image.Image,
    mask: np.ndarray,
    dim: float = 0.35,
    color: tuple[int, int, int] = OUTLINE_RGB,
    width: int = 2,
) -> Image.Image:
    """Show the kept part of ``image`` at full brightness, the rest dimmed, with an outline."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    keep = mask.astype(bool)
    out = np.where(keep[..., None], base, base * dim)
    edge = mask_boundary(keep)
    for _ in range(width - 1):  # thicken the outline inwards
        edge |= mask_boundary(keep & ~edge)
    out[edge] = color
    return Image.fromarray(out.astype(np.uint8))
