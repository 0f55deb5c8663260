"""Label propagation between video frames with frozen patch features (DINO paper, section 4.2).

The labels of a target frame are a weighted vote of the labels of its context frames (the first
frame and the ``n`` previous predictions). For a target patch ``i`` and a source patch ``j`` of
any context frame, the affinity is ``exp(cos(f_i, f_j) / T)`` (T = 0.1), zero when ``j`` lies
outside a ``(2r + 1)^2`` window around ``i`` (r = 12). Only the ``k`` (= 5) largest affinities of
each target patch over all context frames are kept; they are normalised to sum to one and
average the (soft) source labels. The soft labels are upsampled bilinearly by the patch size,
min-max normalised per label, arg-maxed and resized (nearest) to the frame.

Compared with a direct implementation, the window mask is built once per grid size without
Python loops, and the top-k is taken on the cosine similarities (exp is monotonic) so that only
``k`` exponentials per target patch are computed and the source labels are gathered, not
multiplied by a dense affinity matrix.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_TEMPERATURE = 0.1
DEFAULT_TOPK = 5
DEFAULT_NEIGHBOURHOOD = 12


@lru_cache(maxsize=8)
def _window_mask(h: int, w: int, radius: int, device: str) -> torch.Tensor:
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    near_r = (rows[:, None] - rows[None, :]).abs() <= radius
    near_c = (cols[:, None] - cols[None, :]).abs() <= radius
    return near_r & near_c


def neighbourhood_mask(h: int, w: int, radius: int, device: torch.device | str) -> torch.Tensor:
    """Boolean ``(h*w, h*w)``: True where two patches of an ``h x w`` grid are within ``radius``
    rows and ``radius`` columns of each other (built once per grid size and device)."""
    if radius < 0:
        raise ValueError(f"neighbourhood radius must be >= 0, got {radius}")
    return _window_mask(h, w, radius, str(torch.device(device)))


def propagate(
    target: torch.Tensor,
    sources: torch.Tensor,
    source_labels: torch.Tensor,
    mask: torch.Tensor | None,
    topk: int = DEFAULT_TOPK,
    temperature: float = DEFAULT_TEMPERATURE,
    chunk: int = 4096,
) -> torch.Tensor:
    """Soft labels ``(N, C)`` of a target frame.

    ``target``: L2-normalised features ``(N, D)``; ``sources``: ``(M, N, D)`` of the M context
    frames; ``source_labels``: ``(M, N, C)``; ``mask``: ``(N, N)`` bool window or None (no window).
    """
    m, n, d = sources.shape
    if target.shape != (n, d):
        raise ValueError(f"target features {tuple(target.shape)} do not match sources {(n, d)}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    k = min(topk, m * n)
    flat_src = sources.reshape(m * n, d)
    flat_lab = source_labels.reshape(m * n, -1).float()
    out = []
    for start in range(0, n, chunk):
        sim = (target[start : start + chunk] @ flat_src.T).float()  # (c, M*N)
        if mask is not None:
            outside = ~mask[start : start + chunk]  # (c, N)
            sim = sim.view(-1, m, n).masked_fill(outside[:, None, :], float("-inf")).view(-1, m * n)
        vals, idx = sim.topk(k, dim=1)
        weights = torch.exp(vals / temperature)  # masked entries: exp(-inf) = 0
        weights = weights / weights.sum(dim=1, keepdim=True)
        out.append(torch.einsum("qk,qkc->qc", weights, flat_lab[idx]))
    return torch.cat(out)


def to_label_map(soft: torch.Tensor, patch_size: int, frame_hw: tuple[int, int]) -> np.ndarray:
    """Labels ``(H, W)`` uint8 of soft labels ``(C, h, w)``: bilinear upsampling by the patch
    size, per-label min-max normalisation, arg-max, nearest resize to the frame's size."""
    up = F.interpolate(
        soft[None].float(), scale_factor=patch_size, mode="bilinear", align_corners=False
    )[0]
    flat = up.flatten(1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    span = (hi - lo).clamp_min(1e-12)
    normed = torch.where((hi > 0)[:, None], (flat - lo[:, None]) / span[:, None], flat)
    labels = normed.argmax(dim=0).reshape(up.shape[1:]).to(torch.uint8).cpu().numpy()
    height, width = frame_hw
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.NEAREST))


def one_hot(labels: np.ndarray, n_labels: int | None = None) -> torch.Tensor:
    """``(h, w, C)`` float one-hot of an integer label map; C = max label + 1 unless given."""
    t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    c = int(t.max()) + 1 if n_labels is None else n_labels
    return F.one_hot(t, c).float()
