"""The patch-feature picture of the DINO papers: the first three principal components as RGB.

``patch_pca(tokens, grid)`` takes one image's patch tokens ``(N, D)`` (prefix tokens already
removed), centres them, projects them on the three leading eigenvectors of their covariance
and min-max scales each component to [0, 1]. The first component thresholded at 0 gives a
foreground mask; its sign is chosen so that the foreground is the smaller side (ties keep the
positive side). The other components' signs make their largest-magnitude value positive, so
the picture is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PatchPCA:
    """``rgb`` (gh, gw, 3) in [0, 1]; ``foreground`` (gh, gw) bool; ``components`` (gh, gw, 3)."""

    rgb: torch.Tensor
    foreground: torch.Tensor
    components: torch.Tensor


def _leading_components(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """Projections ``(N, k)`` of centred tokens on the ``k`` leading principal axes (0 past D)."""
    x = tokens.double()
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    axes = vecs.flip(-1)[:, :k]
    proj = x @ axes
    if proj.shape[1] < k:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], k - proj.shape[1])], 1)
    return proj


def _fix_signs(proj: torch.Tensor) -> torch.Tensor:
    first = proj[:, 0]
    if int((first > 0).sum()) > first.numel() / 2:
        proj[:, 0] = -first
    for c in range(1, proj.shape[1]):
        col = proj[:, c]
        if col.numel() and col[col.abs().argmax()] < 0:
            proj[:, c] = -col
    return proj


def patch_pca(tokens: torch.Tensor, grid: tuple[int, int]) -> PatchPCA:
    """PCA picture of patch tokens ``(N, D)`` laid out on ``grid`` = (gh, gw), N = gh * gw."""
    gh, gw = grid
    if tokens.shape[0] != gh * gw:
        raise ValueError(f"{tokens.shape[0]} tokens do not fill a {gh}x{gw} grid")
    proj = _fix_signs(_leading_components(tokens, 3))
    lo = proj.min(0).values
    hi = proj.max(0).values
    rgb = (proj - lo) / (hi - lo).clamp(min=1e-12)
    return PatchPCA(
        rgb.float().reshape(gh, gw, 3),
        (proj[:, 0] > 0).reshape(gh, gw),
        proj.float().reshape(gh, gw, 3),
    )
