"""Inference precisions side by side: speed over HTTP and what they change in the masks.

    python -m benchmarks.attention_latency --precision fp32,bf16,int8 --photos DIR
    python -m benchmarks.precision_modes --modes fp32,bf16,int8 --photos DIR --images 200
    python -m benchmarks.precision_modes --archs "" --checkpoint FILE --photos DIR
    python -m benchmarks.precision_modes --tiny          # a seconds-long smoke run

``DIR`` holds ``images/`` and ``masks/`` (DUTS-TE, for example ``duts-te-1k`` extracted from
``$DINO_DATA_DIR/duts-te-1k.tar.gz``); without it, generated pictures are used and the Jaccard is
not reported. Per architecture (random init), at ``--size`` (480):

* **authors' fp32**: ``get_last_selfattention`` with explicit attention in every block (model time
  only, in process: this favours it), p50 / p95;
* **per mode, over HTTP**: a real ``uvicorn backend.main:app``, one client, a new image each
  request (so the map cache never answers), the request's ``precision`` field; p50 / p95 and the
  speed-up over the authors' p50;
* **per mode, on the photos** (in process, the service's own analysis, 60% mass masks): the share
  of mask cells equal to fp32's, the largest difference of a map value from fp32's, and the
  best-head Jaccard against the ground truth (the paper's Table 4 protocol at this size).

Random-init maps are nearly flat, the hardest case for the mask agreement. ``--checkpoint FILE``
(any file the service loads, e.g. a trained run's export) adds the photo figures of that model
per mode, so the agreement of a trained model's peaked maps can be read beside them.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from backend.analysis.params import AttentionParams
from backend.analysis.service import AttentionService
from benchmarks.attention_latency import (
    ARCHS,
    TINY_ARCHS,
    baseline_fn,
    build_model,
    percentile,
    service_for,
    time_calls,
    write_checkpoints,
)
from benchmarks.serving import uvicorn_process
from trainer.eval.seg import pair_images_and_masks


@dataclass
class ModeResult:
    arch: str
    mode: str
    p50_ms: float
    p95_ms: float
    speedup: float
    mask_agreement: float | None = None
    max_map_diff: float | None = None
    best_head_jaccard: float | None = None


def noise_png(size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def http_latency(url: str, arch: str, mode: str, args) -> list[float]:
    """Seconds per request, each a new image, with ``precision=mode``."""
    data = {"model": arch, "image_size": str(args.size), "resize": "square", "overlays": "false"}
    out = []
    with httpx.Client(timeout=600) as client:
        for i in range(args.repeats + 2):
            files = {"image": ("x.png", noise_png(args.size, hash((arch, mode, i)) % 2**32), "p")}
            t0 = time.perf_counter()
            r = client.post(f"{url}/attention", files=files, data={**data, "precision": mode})
            r.raise_for_status()
            if i >= 2:  # two warm-up requests (the first builds the int8 copy)
                out.append(time.perf_counter() - t0)
    return out


def photo_quality(service: AttentionService, arch: str, modes: list[str], args) -> dict:
    """Per mode: mask agreement with fp32, largest map difference, best-head Jaccard (%)."""
    pairs = (
        pair_images_and_masks(args.photos / "images", args.photos / "masks", args.images)[0]
        if args.photos
        else [(None, None)] * min(args.images, 8)
    )
    stats = {m: {"agree": [], "diff": [], "iou": []} for m in modes}
    for i, (image_path, mask_path) in enumerate(pairs):
        image = image_path.read_bytes() if image_path else noise_png(args.size, i)
        gt = mask_path.read_bytes() if mask_path else None
        maps = {}
        for mode in ["fp32", *[m for m in modes if m != "fp32"]]:
            params = AttentionParams(
                model=arch, image_size=args.size, resize="square", overlays=False, precision=mode
            )
            result = service.analyse(service.model_for(params), params, image, gt)
            maps[mode] = result
            ref = maps["fp32"]
            stats[mode]["agree"].append(float((result.maps.masks == ref.maps.masks).mean()))
            diff = np.abs(result.maps.attentions - ref.maps.attentions).max()
            stats[mode]["diff"].append(float(diff))
            if result.iou is not None:
                stats[mode]["iou"].append(max(result.iou))
    return {
        m: (
            statistics.mean(s["agree"]),
            max(s["diff"]),
            100 * statistics.mean(s["iou"]) if s["iou"] else None,
        )
        for m, s in stats.items()
    }


def run(args: argparse.Namespace) -> list[ModeResult]:
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = TINY_ARCHS if args.tiny else {k: v for k, v in ARCHS.items() if k in args.archs}
    results = arch_rows({name: build_model(*spec) for name, spec in archs.items()}, args)
    if args.checkpoint:
        checkpoint_quality(args)
    return results


def arch_rows(models: dict, args: argparse.Namespace) -> list[ModeResult]:
    """Latency and photo figures of the random-init architectures (none with ``--archs ""``)."""
    if not models:
        return []
    results: list[ModeResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_checkpoints(folder, models)
        args.precision = "fp32"
        service = service_for(folder, args)
        env = {
            "DINO_CHECKPOINT_DIR": str(folder),
            "DINO_CACHE_DIR": str(folder / "cache"),
            "DINO_DEVICE": "cpu",
            "DINO_ALLOW_DOWNLOADS": "false",
            "DINO_DEFAULT_MODEL": next(iter(models)),
            "DINO_QUEUE_TIMEOUT_S": "3600",
        }
        with uvicorn_process(env, timeout_s=180) as url:
            for name, model in models.items():
                results += arch_results(name, model, url, service, args)
    return results


def checkpoint_quality(args: argparse.Namespace) -> dict:
    """The photo figures per mode for ``--checkpoint`` (no latency: same FLOPs as its arch)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copyfile(args.checkpoint, folder / args.checkpoint.name)
        args.precision = "fp32"
        quality = photo_quality(service_for(folder, args), args.checkpoint.stem, args.modes, args)
    for mode, (agree, diff, iou) in quality.items():
        jaccard = "n/a" if iou is None else f"{iou:.2f}"
        print(
            f"{args.checkpoint.stem} {mode:5s} masks equal to fp32 {100 * agree:.2f}%  "
            f"max map diff {diff:.2e}  best-head Jaccard {jaccard}",
            flush=True,
        )
    return quality


def arch_results(name: str, model, url: str, service: AttentionService, args) -> list[ModeResult]:
    x = torch.randn(1, 3, args.size, args.size)
    lat, _ = time_calls(baseline_fn(model, x), args.repeats)
    base_ms = [v * 1e3 for v in lat]
    base_p50 = statistics.median(base_ms)
    print(f"{name}: authors' fp32 p50 {base_p50:.1f} ms p95 {percentile(base_ms, 95):.1f} ms")
    latency = {m: [v * 1e3 for v in http_latency(url, name, m, args)] for m in args.modes}
    quality = photo_quality(service, name, args.modes, args)  # after: it would load the cores
    out = []
    for mode in args.modes:
        ms = latency[mode]
        p50 = statistics.median(ms)
        agree, diff, iou = quality[mode]
        out.append(
            ModeResult(name, mode, p50, percentile(ms, 95), base_p50 / p50, agree, diff, iou)
        )
        print_result(out[-1])
    return out


def print_result(r: ModeResult) -> None:
    iou = "n/a" if r.best_head_jaccard is None else f"{r.best_head_jaccard:.2f}"
    print(
        f"{r.arch:8s} {r.mode:5s} HTTP p50 {r.p50_ms:7.1f} ms p95 {r.p95_ms:7.1f} ms  "
        f"x{r.speedup:.2f} vs authors' fp32  masks equal to fp32 {100 * r.mask_agreement:.2f}%  "
        f"max map diff {r.max_map_diff:.2e}  best-head Jaccard {iou}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="vit_s16,vit_s8")
    p.add_argument(
        "--modes", "--precision", default="fp32,bf16,int8", help="comma list of fp32, bf16, int8"
    )
    p.add_argument("--size", type=int, default=480)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--photos", type=Path, help="a folder with images/ and masks/ (DUTS-TE)")
    p.add_argument("--images", type=int, default=200, help="photos for the mask figures")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--checkpoint", type=Path, help="also the photo figures of this file (e.g. a trained one)"
    )
    p.add_argument("--tiny", action="store_true", help="a tiny model at 64 px (smoke test)")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.tiny:
        args.size, args.repeats, args.images = min(args.size, 64), min(args.repeats, 3), 3
    return args


def main(argv: list[str] | None = None) -> list[ModeResult]:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
