"""Attention that went to register tokens (Darcet et al. 2023), reported beside the patch maps.

A row of block ``layer``'s softmax covers every token: CLS, the registers, then the patches.
The maps keep the patch columns only; the register columns become ``register_attention``
(heads x registers) for the CLS row and ``query_register_attention`` for the query patch's row.
Per head, the patch map plus the register attention sum to 1 minus the row's CLS column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.analysis.block_maps import RawMaps


@dataclass
class RegisterAttention:
    """The register columns of the CLS row and of the query row (None without registers / query)."""

    registers: int
    cls: np.ndarray | None  # heads, registers float32
    query: np.ndarray | None = None  # heads, registers float32


def register_attention(raw: RawMaps) -> RegisterAttention:
    """Slice columns ``1 .. num_prefix-1`` (the registers, after CLS) of the cached rows."""
    count = raw.num_prefix - 1
    if count <= 0:
        return RegisterAttention(0, None)
    cols = slice(1, raw.num_prefix)
    query = None if raw.query_rows is None else np.ascontiguousarray(raw.query_rows[:, cols])
    return RegisterAttention(count, np.ascontiguousarray(raw.cls_rows[:, cols]), query)


def register_json(reg: RegisterAttention | None, with_query: bool) -> dict[str, Any]:
    """``register_attention`` (null without registers), and ``query_register_attention``."""
    cls = None if reg is None or reg.cls is None else reg.cls.tolist()
    out: dict[str, Any] = {"register_attention": cls}
    if with_query:
        query = None if reg is None else reg.query
        out["query_register_attention"] = None if query is None else query.tolist()
    return out


def register_arrays(
    reg: RegisterAttention | None, num_heads: int, with_query: bool
) -> dict[str, np.ndarray]:
    """The npz arrays, heads x registers (heads x 0 for a model without registers)."""
    empty = np.zeros((num_heads, 0), dtype=np.float32)
    out = {"register_attention": empty if reg is None or reg.cls is None else reg.cls}
    if with_query:
        out["query_register_attention"] = empty if reg is None or reg.query is None else reg.query
    return out
