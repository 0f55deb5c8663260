"""First request vs re-threshold over HTTP with overlays: the threshold slider's cost.

Used by ``benchmarks/attention_latency.py`` (``--explore``). Each first request sends a new image (a
map cache miss: the model runs); each re-threshold sends an image already analysed with another
threshold (a hit: no model run). Both ask for overlays in the app's format. The first requests' own
``timings_ms`` also give overlay time against model time in the same request.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass

import httpx
import numpy as np
from PIL import Image

APP_FORMAT = "jpeg"  # what app/handlers.py asks the service for


@dataclass
class ExploreResult:
    arch: str
    overlay_format: str
    n: int
    first_p50_ms: float
    first_p95_ms: float
    rethreshold_p50_ms: float
    rethreshold_p95_ms: float
    ratio_p50: float  # re-threshold p50 / first-request p50
    model_p50_ms: float  # timings_ms.model of the first requests
    overlays_p50_ms: float  # timings_ms.overlays of the first requests (image, heads, mean, masks)
    overlays_over_model: float
    rethreshold_server_p50_ms: float  # timings_ms.total of the re-thresholds
    all_cached: bool


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def distinct_png(size: int, seed: int) -> bytes:
    """A smooth photo-like picture; each seed gives other bytes (so a map cache miss)."""
    yy, xx = np.mgrid[0:size, 0:size]
    phase = seed * 0.7
    arr = np.stack(
        [
            127 + 120 * np.sin(xx / 37 + phase),
            127 + 120 * np.cos(yy / 23 - phase),
            (xx + yy + 13 * seed) % 256,
        ],
        -1,
    )
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _post(
    client: httpx.Client, url: str, arch: str, png: bytes, size: int, threshold: float, fmt: str
) -> tuple[float, dict]:
    data = {
        "model": arch,
        "image_size": str(size),
        "resize": "square",
        "overlays": "true",
        "overlay_format": fmt,
        "threshold": repr(threshold),
    }
    t0 = time.perf_counter()
    r = client.post(f"{url}/attention", files={"image": ("x.png", png, "image/png")}, data=data)
    r.raise_for_status()
    body = r.json()
    return (time.perf_counter() - t0) * 1e3, body


def explore_latency(
    arch: str, url: str, size: int, repeats: int, fmt: str = APP_FORMAT
) -> ExploreResult:
    """``repeats`` first requests (new images) and, for each, ``2`` re-thresholds; one client."""
    first, rethr, model, overlays, server, cached = [], [], [], [], [], []
    with httpx.Client(timeout=600) as client:
        for seed in (-1, -2):  # warm-up: model load, allocator, encoders
            _post(client, url, arch, distinct_png(size, seed), size, 0.6, fmt)
        for seed in range(repeats):
            png = distinct_png(size, seed)
            ms, body = _post(client, url, arch, png, size, 0.6, fmt)
            first.append(ms)
            model.append(body["timings_ms"]["model"])
            overlays.append(body["timings_ms"]["overlays"])
            cached.append(not body["cached"])
            for threshold in (0.3, 0.85):
                ms, body = _post(client, url, arch, png, size, threshold, fmt)
                rethr.append(ms)
                server.append(body["timings_ms"]["total"])
                cached.append(body["cached"] and body["timings_ms"]["model"] == 0)
    f50, r50 = statistics.median(first), statistics.median(rethr)
    m50, o50 = statistics.median(model), statistics.median(overlays)
    return ExploreResult(
        arch,
        fmt,
        repeats,
        f50,
        percentile(first, 95),
        r50,
        percentile(rethr, 95),
        r50 / f50,
        m50,
        o50,
        o50 / m50,
        statistics.median(server),
        all(cached),
    )


def print_explore(r: ExploreResult) -> None:
    print(
        f"{r.arch:8s} HTTP overlays={r.overlay_format}: first request p50={r.first_p50_ms:.0f} ms "
        f"p95={r.first_p95_ms:.0f} ms (n={r.n}); re-threshold p50={r.rethreshold_p50_ms:.0f} ms "
        f"p95={r.rethreshold_p95_ms:.0f} ms (n={2 * r.n}, "
        f"server {r.rethreshold_server_p50_ms:.0f} ms) "
        f"= {100 * r.ratio_p50:.0f}% of the first request; in the first requests overlays "
        f"{r.overlays_p50_ms:.0f} ms = {100 * r.overlays_over_model:.0f}% of the model's "
        f"{r.model_p50_ms:.0f} ms; "
        f"cache {'hit on every re-threshold' if r.all_cached else 'NOT as expected'}",
        flush=True,
    )
