"""Serialise an :class:`~backend.service.Analysis` as JSON or as an ``.npz`` download."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
from fastapi.responses import Response

from backend.service import Analysis, best_head


def _meta(a: Analysis) -> dict[str, Any]:
    info, entry = a.loaded.info, a.loaded.entry
    w, h = a.prepared.image.size
    return {
        "model": entry.id, "arch": info.arch, "patch_size": info.patch_size, "num_heads": info.num_heads,
        "trained": info.trained, "summary": entry.summary, "source": entry.source, "layout": info.source,
        "grid": [h // info.patch_size, w // info.patch_size], "image_size": [h, w],
        "params": a.params.model_dump(exclude={"model"}),
        "timings_ms": {k: round(v, 3) for k, v in a.timings_ms.items()},
    }


def analysis_dict(a: Analysis) -> dict[str, Any]:
    """The JSON object of docs/API.md."""
    out = _meta(a)
    out["attentions"] = a.maps.attentions.tolist()
    out["mean_attention"] = a.maps.mean_attention.tolist()
    out["masks"] = a.maps.masks.astype(np.uint8).tolist()
    out["coverage"] = a.maps.coverage
    if a.overlays is not None:
        out["overlays"] = a.overlays
    if a.iou is not None:
        out["iou"] = a.iou
        out["best_head"] = best_head(a.iou)
        out["best_iou"] = a.iou[out["best_head"]]
    return out


def json_response(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


def _arrays(a: Analysis, prefix: str = "") -> dict[str, np.ndarray]:
    meta = _meta(a)
    arrays: dict[str, np.ndarray] = {
        "attentions": a.maps.attentions, "mean_attention": a.maps.mean_attention,
        "masks": a.maps.masks.astype(np.uint8), "coverage": np.asarray(a.maps.coverage, dtype=np.float32),
    }
    if a.iou is not None:
        arrays["iou"] = np.asarray(a.iou, dtype=np.float32)
        meta["best_head"], meta["best_iou"] = best_head(a.iou), a.iou[best_head(a.iou)]
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
    return Response(buf.getvalue(), media_type="application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename={name}"})
