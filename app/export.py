"""The ZIP download: overlay PNGs, the arrays as .npz, and a JSON of the model and parameters.

The arrays are rebuilt from the JSON reply the page is showing, so the download matches the
screen exactly and needs no second trip to the service. Layout of the archive::

    overlays/image.png  overlays/mean.png  overlays/head_00.png ..  overlays/mask_00.png ..
                        [overlays/query_head_00.png .. overlays/query_mean.png]
                        [overlays/composite.png] [overlays/pca.png overlays/pca_fg.png]
                        (.jpg / .webp when the service sent those)
    attention.npz       attentions (heads, gh, gw) float32, mean_attention (gh, gw) float32,
                        masks (heads, gh, gw) uint8, coverage (heads,) float32, [iou (heads,)],
                        [query_attentions (heads, gh, gw), query_mean (gh, gw)] float32,
                        [pca_rgb (gh, gw, 3) float32, pca_fg (gh, gw) uint8],
                        [composite_colors (k, 3) uint8],
                        meta (JSON string of the scalar fields)
    result.json         model, arch, trained, source, grid, image size, block, query patch,
                        composite heads and colours, parameters, per-head numbers
"""

from __future__ import annotations

import base64
import io
import json
import re
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_SCALAR_KEYS = (
    "model",
    "arch",
    "patch_size",
    "num_heads",
    "trained",
    "source",
    "grid",
    "image_size",
    "params",
    "best_head",
    "best_iou",
    "layer",
    "depth",
    "query",
    "composite_heads",
    "composite_colors",
    "cached",
)
_OPTIONAL_ARRAYS = {
    "query_attentions": np.float32,
    "query_mean": np.float32,
    "pca_rgb": np.float32,
    "pca_fg": np.uint8,
    "composite_colors": np.uint8,
}
_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def arrays_from_result(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """The reply's arrays with the dtypes and names of the service's own ``format=npz``."""
    arrays = {
        "attentions": np.asarray(result["attentions"], dtype=np.float32),
        "mean_attention": np.asarray(result["mean_attention"], dtype=np.float32),
        "masks": np.asarray(result["masks"], dtype=np.uint8),
        "coverage": np.asarray(result["coverage"], dtype=np.float32),
    }
    if result.get("iou") is not None:
        arrays["iou"] = np.asarray(result["iou"], dtype=np.float32)
    for key, dtype in _OPTIONAL_ARRAYS.items():
        if result.get(key) is not None:
            arrays[key] = np.asarray(result[key], dtype=dtype)
    arrays["meta"] = np.asarray(json.dumps({k: result[k] for k in _SCALAR_KEYS if k in result}))
    return arrays


def summary_json(result: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """What was computed and how: everything but the big arrays and images."""
    summary = {k: result[k] for k in _SCALAR_KEYS if k in result}
    summary.update(
        {
            "coverage": result.get("coverage"),
            "iou": result.get("iou"),
            "timings_ms": result.get("timings_ms"),
            "request": request,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    return summary


def _overlay_files(result: dict[str, Any]) -> dict[str, bytes]:
    overlays = result.get("overlays") or {}
    ext = _EXTENSIONS.get(str(result.get("overlay_mime")), "png")
    files = {}
    for key in ("image", "mean", "query_mean", "composite", "pca", "pca_fg"):
        if overlays.get(key):
            files[f"overlays/{key}.{ext}"] = base64.b64decode(overlays[key])
    for kind, name in (("heads", "head"), ("masks", "mask"), ("query_heads", "query_head")):
        for i, data in enumerate(overlays.get(kind) or []):
            files[f"overlays/{name}_{i:02d}.{ext}"] = base64.b64decode(data)
    return files


def safe_name(text: str) -> str:
    """``text`` reduced to letters, digits, dot, dash and underscore, for file names."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def build_zip(
    result: dict[str, Any], request: dict[str, Any], out_dir: str | Path | None = None
) -> Path:
    """Write the archive for one analysis and return its path (in a fresh temp folder by
    default)."""
    folder = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="dino-app-"))
    folder.mkdir(parents=True, exist_ok=True)
    stem = safe_name(Path(str(request.get("image_name") or "image")).stem)
    path = folder / f"attention_{safe_name(str(result['model']))}_{stem}.zip"
    npz = io.BytesIO()
    np.savez_compressed(npz, **arrays_from_result(result))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in _overlay_files(result).items():
            archive.writestr(name, data)
        archive.writestr("attention.npz", npz.getvalue())
        archive.writestr("result.json", json.dumps(summary_json(result, request), indent=2))
    return path
