"""What is derived from a block's attention rows: the paper's masks, the mean and the IoU.

The model itself runs through :class:`backend.analysis.model_step.ModelStep`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.model.attention_maps import jaccard, threshold_masks, upsample_nearest


@dataclass
class MapSet:
    """Per-head attention maps and what is derived from them."""

    attentions: np.ndarray  # heads, gh, gw float32
    mean_attention: np.ndarray  # gh, gw
    masks: np.ndarray  # heads, gh, gw bool
    coverage: list[float]


def derive_maps(attn: torch.Tensor, threshold: float) -> MapSet:
    """Masks by the paper's procedure, mean over heads, and the fraction of patches kept."""
    masks = threshold_masks(attn, threshold)
    coverage = masks.flatten(1).float().mean(1).tolist()
    return MapSet(attn.numpy(), attn.mean(0).numpy(), masks.numpy(), [float(c) for c in coverage])


def head_ious(masks: np.ndarray, gt: np.ndarray, patch: int) -> list[float]:
    """Jaccard of each head's mask, upsampled to pixels, with the boolean ``gt`` (h x w)."""
    pixel_masks = torch.from_numpy(upsample_nearest(masks, patch))
    return [float(v) for v in jaccard(pixel_masks, torch.from_numpy(gt)).tolist()]
