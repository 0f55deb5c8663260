"""TokenCut: the normalised cut of the patch graph of the last block's keys (Wang et al. 2022).

On the L2-normalised patch keys ``f`` (heads concatenated, prefix tokens dropped):

1. the graph ``W_ij = 1`` where the cosine ``f_i . f_j > tau`` (0.2), else ``eps`` (1e-5);
2. ``D = diag(sum_j W_ij)``; the second smallest eigenvector ``x`` of ``(D - W) x = lambda D x``
   (solved as the symmetric ``D^-1/2 (D - W) D^-1/2``, in float64);
3. the foreground is ``x > mean(x)``, flipped so that it holds the seed, the patch of largest
   ``|x|``;
4. the box is that of the 4-connected component of the foreground holding the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.model.eva_backbone import as_backbone
from trainer.model.facets import block_facet
from trainer.model.lost import mask_box, pixel_box, seed_component

DEFAULT_TAU = 0.2
DEFAULT_EPS = 1e-5


@dataclass
class TokenCutResult:
    """TokenCut's output for one image; ``box`` is ``[x0, y0, x1, y1]`` in pixels of the input."""

    seed: tuple[int, int]
    eigenvector: torch.Tensor  # (gh, gw), float64, oriented so the seed side is positive-ish
    mask: np.ndarray  # (gh, gw) bool, the seed's component of the foreground
    patch_box: list[int]
    box: list[float]


def cut_graph(
    keys: torch.Tensor, tau: float = DEFAULT_TAU, eps: float = DEFAULT_EPS
) -> torch.Tensor:
    """``(N, N)`` float64 graph: 1 where the keys' cosine exceeds ``tau``, else ``eps``."""
    f = F.normalize(keys.double(), dim=-1)
    cos = f @ f.T
    return torch.where(cos > tau, torch.ones_like(cos), torch.full_like(cos, eps))


def second_eigenvector(graph: torch.Tensor) -> torch.Tensor:
    """The generalised eigenvector of ``(D - W) x = lambda D x`` with the 2nd smallest lambda."""
    degree = graph.sum(dim=1)
    inv_sqrt = degree.rsqrt()
    laplacian = torch.diag(degree) - graph
    sym = inv_sqrt[:, None] * laplacian * inv_sqrt[None, :]
    _, vectors = torch.linalg.eigh(sym)
    return inv_sqrt * vectors[:, 1]


def tokencut_from_keys(
    keys: torch.Tensor,
    grid: tuple[int, int],
    tau: float = DEFAULT_TAU,
    eps: float = DEFAULT_EPS,
    patch_size: int = 1,
    image_hw: Sequence[int] | None = None,
) -> TokenCutResult:
    """TokenCut's seed, foreground mask and box from patch keys ``(N, D)`` on ``grid``."""
    gh, gw = grid
    if keys.shape[0] != gh * gw or gh * gw < 2:
        raise ValueError(f"{keys.shape[0]} keys do not fit a {gh}x{gw} grid of at least 2 patches")
    vec = second_eigenvector(cut_graph(keys, tau, eps))
    seed_index = int(vec.abs().argmax())
    foreground = vec > vec.mean()
    if not foreground[seed_index]:
        vec, foreground = -vec, ~foreground
    seed = (seed_index // gw, seed_index % gw)
    mask = seed_component(foreground.reshape(gh, gw).numpy().astype(float), seed)
    patch_box = mask_box(mask)
    box = pixel_box(patch_box, patch_size, image_hw)
    return TokenCutResult(seed, vec.reshape(gh, gw), mask, patch_box, box)


@torch.no_grad()
def tokencut(
    model: nn.Module, x: torch.Tensor, tau: float = DEFAULT_TAU, eps: float = DEFAULT_EPS
) -> TokenCutResult:
    """TokenCut on the last block's keys of one normalised image ``x`` ``(1, 3, H, W)``."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"tokencut takes one image (1, 3, H, W), got {tuple(x.shape)}")
    model = as_backbone(model)
    keys = block_facet(model, x, -1, "key")[0].cpu()
    grid = model.grid_size(x.shape[-2], x.shape[-1])
    return tokencut_from_keys(keys, grid, tau, eps, model.patch_size, (x.shape[-2], x.shape[-1]))
