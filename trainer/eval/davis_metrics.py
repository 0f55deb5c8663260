"""DAVIS video-segmentation metrics: region similarity J and boundary accuracy F.

Written from the definitions of the DAVIS benchmark (Perazzi et al. 2016; davis2017-evaluation):

* J is the intersection over union of a predicted and a ground-truth object mask; two empty
  masks score 1.
* F is the F-measure of boundary precision and recall. A mask's boundary is its one-pixel
  ``seg2bmap`` map (a pixel whose right, lower or lower-right neighbour differs); a boundary
  pixel matches when the other boundary lies within a disk of radius
  ``ceil(0.008 * image diagonal)`` around it.
* For one object, the per-frame values over the frames between the first and the last
  (semi-supervised protocol) give the mean, the recall (fraction of frames above 0.5) and the
  decay (mean of the first quarter of the frames minus mean of the last quarter).
* A sequence scores the mean over its objects; the dataset score is the mean over all objects
  of all sequences (as the benchmark's own script reports it).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import binary_dilation

BOUND_TH = 0.008
N_DECAY_BINS = 4


def region_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """J of two binary masks of the same shape (1.0 when both are empty)."""
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    gt, pred = gt.astype(bool), pred.astype(bool)
    union = np.logical_or(gt, pred).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(gt, pred).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask, offset half a pixel towards the origin."""
    seg = mask.astype(bool)
    right = np.zeros_like(seg)
    below = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    below[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    edge = (seg ^ right) | (seg ^ below) | (seg ^ diag)
    edge[-1, :] = seg[-1, :] ^ right[-1, :]
    edge[:, -1] = seg[:, -1] ^ below[:, -1]
    edge[-1, -1] = False
    return edge


def disk(radius: int) -> np.ndarray:
    """Boolean disk structuring element of the given radius, shape (2r+1, 2r+1)."""
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = BOUND_TH) -> int:
    """Match radius in pixels: ``bound_th`` itself when >= 1, else ``ceil(bound_th * diag)``."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """F of two binary masks: the harmonic mean of boundary precision and recall."""
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    footprint = disk(boundary_tolerance(gt.shape, bound_th))
    pred_b, gt_b = boundary_map(pred), boundary_map(gt)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 or n_gt == 0:
        precision = 1.0 if n_pred == 0 else 0.0
        recall = 1.0 if n_gt == 0 else 0.0
    else:
        precision = float((pred_b & binary_dilation(gt_b, footprint)).sum() / n_pred)
        recall = float((gt_b & binary_dilation(pred_b, footprint)).sum() / n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (fraction > 0.5) and decay (first-quarter mean - last-quarter mean)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean(values))
    recall = float(np.mean(values > 0.5))
    edges = np.round(np.linspace(1, len(values), N_DECAY_BINS + 1) + 1e-10).astype(int) - 1
    bins = [values[edges[i] : edges[i + 1] + 1] for i in range(N_DECAY_BINS)]
    decay = float(np.mean(bins[0]) - np.mean(bins[-1]))
    return mean, recall, decay


def evaluate_sequence(gt: np.ndarray, pred: np.ndarray, n_objects: int) -> dict[str, list[float]]:
    """Per-object J/F mean, recall and decay of label maps ``(T, H, W)``; frames 0 and T-1 out."""
    if gt.shape != pred.shape:
        raise ValueError(f"label stacks differ: ground truth {gt.shape}, prediction {pred.shape}")
    gt, pred = gt[1:-1], pred[1:-1]
    out: dict[str, list[float]] = {
        k: [] for k in ("J", "J_recall", "J_decay", "F", "F_recall", "F_decay")
    }
    for obj in range(1, n_objects + 1):
        js = np.array([region_iou(g == obj, p == obj) for g, p in zip(gt, pred, strict=True)])
        fs = np.array([boundary_f(g == obj, p == obj) for g, p in zip(gt, pred, strict=True)])
        for name, vals in (("J", js), ("F", fs)):
            mean, recall, decay = statistics(vals)
            out[name].append(mean)
            out[f"{name}_recall"].append(recall)
            out[f"{name}_decay"].append(decay)
    return out
