"""Dense matching between two images' patch descriptors (Amir et al. 2021).

``query_similarity`` gives the cosine similarity of one patch of image A to every patch of B.
``best_buddies`` finds the mutual nearest neighbours under cosine similarity: patch ``i`` of A
and patch ``j`` of B are best buddies when ``j`` is ``i``'s nearest neighbour in B and ``i`` is
``j``'s nearest neighbour in A. The ``top_k`` most similar pairs are returned as
``[row_a, col_a, row_b, col_b, similarity]``, sorted by similarity, highest first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_matrix(desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
    """``(Na, Nb)`` cosine similarities of descriptors ``(Na, D)`` and ``(Nb, D)`` (float32)."""
    a = F.normalize(desc_a.detach().float(), dim=-1)
    b = F.normalize(desc_b.detach().float(), dim=-1)
    return a @ b.T


def check_query(query: tuple[int, int], grid: tuple[int, int]) -> int:
    """Flat index of ``query = (row, col)`` in ``grid``, or ValueError naming the valid range."""
    row, col = query
    gh, gw = grid
    if not (0 <= row < gh and 0 <= col < gw):
        raise ValueError(
            f"query ({row}, {col}) is outside A's {gh}x{gw} patch grid; "
            f"use rows 0 to {gh - 1} and columns 0 to {gw - 1}"
        )
    return row * gw + col


def query_similarity(
    desc_a: torch.Tensor,
    desc_b: torch.Tensor,
    query: tuple[int, int],
    grid_a: tuple[int, int],
    grid_b: tuple[int, int],
) -> torch.Tensor:
    """B's ``(gh_b, gw_b)`` grid of cosine similarities to patch ``query`` of A."""
    index = check_query(query, grid_a)
    sims = cosine_matrix(desc_a[index : index + 1], desc_b)[0]
    return sims.reshape(grid_b)


def best_buddies(
    desc_a: torch.Tensor,
    desc_b: torch.Tensor,
    grid_a: tuple[int, int],
    grid_b: tuple[int, int],
    top_k: int = 20,
) -> list[list[float]]:
    """The ``top_k`` best-buddy pairs ``[row_a, col_a, row_b, col_b, similarity]``, best first."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    sims = cosine_matrix(desc_a, desc_b)
    nn_ab = sims.argmax(dim=1)  # for each A patch, its nearest B patch
    nn_ba = sims.argmax(dim=0)  # for each B patch, its nearest A patch
    a_idx = torch.arange(sims.shape[0], device=sims.device)
    mutual = nn_ba[nn_ab] == a_idx
    a_sel = a_idx[mutual]
    b_sel = nn_ab[mutual]
    values = sims[a_sel, b_sel]
    order = torch.argsort(values, descending=True, stable=True)[:top_k]
    gw_a, gw_b = grid_a[1], grid_b[1]
    pairs = []
    for i in order.tolist():
        ia, ib = int(a_sel[i]), int(b_sel[i])
        pairs.append([ia // gw_a, ia % gw_a, ib // gw_b, ib % gw_b, float(values[i])])
    return pairs
