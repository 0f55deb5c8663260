"""Serialise an :class:`~backend.analysis.service.Analysis` as JSON or as an ``.npz`` download."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
from fastapi.responses import Response

from backend.analysis.overlay_render import OVERLAY_MIME
from backend.analysis.registers import register_arrays, register_json
from backend.analysis.service import Analysis, best_head
from backend.api.finite_json import finite_dumps
from backend.models.registry import trained_fields


def _meta(a: Analysis) -> dict[str, Any]:
    info = a.loaded.info
    entry = a.loaded.entry
    w, h = a.prepared.image.size
    return {
        "model": entry.id,
        "arch": info.arch,
        "patch_size": info.patch_size,
        "num_heads": info.num_heads,
        **trained_fields(info.trained),
        "summary": entry.summary,
        "source": entry.source,
        "layout": info.layout,
        "grid": [h // info.patch_size, w // info.patch_size],
        "image_size": [h, w],
        "params": a.params.model_dump(exclude={"model"}),
        "timings_ms": {k: round(v, 3) for k, v in a.timings_ms.items()},
        "layer": a.layer,
        "depth": len(a.loaded.model.blocks),
        "cached": a.cached,
        "precision": a.precision,
        "family": info.family,
        "registers": info.registers,
    }


def analysis_dict(a: Analysis) -> dict[str, Any]:
    """The JSON object of docs/API.md."""
    out = _meta(a)
    out["attentions"] = a.maps.attentions.tolist()
    out["mean_attention"] = a.maps.mean_attention.tolist()
    out["masks"] = a.maps.masks.astype(np.uint8).tolist()
    out["coverage"] = a.maps.coverage
    out.update(_extras_json(a))
    out.update(register_json(a.registers, a.params.query is not None))
    if a.overlays is not None:
        out["overlays"] = a.overlays
        out["overlay_mime"] = OVERLAY_MIME[a.params.overlay_format]
    if a.iou is not None:
        out["iou"] = a.iou
        out["best_head"] = best_head(a.iou)
        out["best_iou"] = a.iou[out["best_head"]]
    return out


def _extras_arrays(a: Analysis) -> dict[str, np.ndarray]:
    """The optional arrays of the reply: query maps, PCA picture and foreground."""
    e = a.extras
    out = {}
    if e is None:
        return out
    if e.query_attentions is not None and e.query_mean is not None:
        out["query_attentions"] = e.query_attentions
        out["query_mean"] = e.query_mean
    if e.pca_rgb is not None and e.pca_fg is not None:
        out["pca_rgb"] = e.pca_rgb
        out["pca_fg"] = e.pca_fg.astype(np.uint8)
    return out


def _extras_json(a: Analysis) -> dict[str, Any]:
    out: dict[str, Any] = {k: v.tolist() for k, v in _extras_arrays(a).items()}
    if a.extras is not None and a.extras.query is not None:
        out["query"] = list(a.extras.query)
    if a.extras is not None and a.extras.composite_colors is not None:
        out["composite_heads"] = a.extras.heads
        out["composite_colors"] = a.extras.composite_colors
    return out


def json_response(body: dict[str, Any]) -> Response:
    return Response(finite_dumps(body, separators=(",", ":")), media_type="application/json")


def _arrays(a: Analysis, prefix: str = "") -> dict[str, np.ndarray]:
    meta = _meta(a)
    arrays: dict[str, np.ndarray] = {
        "attentions": a.maps.attentions,
        "mean_attention": a.maps.mean_attention,
        "masks": a.maps.masks.astype(np.uint8),
        "coverage": np.asarray(a.maps.coverage, dtype=np.float32),
        **_extras_arrays(a),
        **register_arrays(a.registers, a.loaded.info.num_heads, a.params.query is not None),
    }
    if a.extras is not None and a.extras.composite_colors is not None:
        arrays["composite_colors"] = np.asarray(a.extras.composite_colors, dtype=np.uint8)
        meta["composite_heads"] = a.extras.heads
    if a.iou is not None:
        arrays["iou"] = np.asarray(a.iou, dtype=np.float32)
        meta["best_head"] = best_head(a.iou)
        meta["best_iou"] = a.iou[best_head(a.iou)]
    arrays["meta"] = np.asarray(json.dumps(meta))
    return {prefix + k: v for k, v in arrays.items()}


def npz_response(analyses: list[Analysis], batch: bool = False) -> Response:
    """Arrays plus a JSON ``meta`` string, readable with ``np.load(..., allow_pickle=False)``.

    A batch prefixes each image's arrays with its index: ``0_attentions``, ``1_attentions``...
    """
    arrays: dict[str, np.ndarray] = {}
    for i, a in enumerate(analyses):
        arrays.update(_arrays(a, f"{i}_" if batch else ""))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", analyses[0].loaded.entry.id)
    name = f"attention_batch_{safe}.npz" if batch else f"attention_{safe}.npz"
    return Response(
        buf.getvalue(),
        media_type="application/octet-stream",
        headers={"Content-Disposition": f"attachment; filename={name}"},
    )
