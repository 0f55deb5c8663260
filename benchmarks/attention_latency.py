"""Attention-map latency: the service's fast path against the straightforward all-explicit path.

    python -m benchmarks.attention_latency                   # ViT-S/16 and ViT-S/8, 480x480, fp32
    python -m benchmarks.attention_latency --precision bf16  # the service with bf16 autocast
    # every mode in one run, with mask agreement and Jaccard (benchmarks/precision_modes.py):
    python -m benchmarks.attention_latency --precision fp32,bf16,int8 --photos DIR
    python -m benchmarks.attention_latency --quick           # fewer repeats, 1 and 4 clients
    python -m benchmarks.attention_latency --tiny --no-http  # a seconds-long smoke run
    # first request vs re-threshold only:
    python -m benchmarks.attention_latency --explore --archs vit_s16

Measured in one run, per architecture (random init: timing does not depend on the weights):

* **baseline**: the straightforward path like the authors' ``get_last_selfattention``: explicit
  softmax(QK^T) attention in every block and the full (1+N) x (1+N) weights of the last block,
  fp32, model time only (no decode, no masks: this favours the baseline);
* **fast path**: ``DinoViT.get_cls_attention`` under ``torch.inference_mode()``: fused SDPA in
  every block but the last, whose weights are computed for the CLS query only;
* **in-process**: the whole service path without HTTP: PNG decode, resize, model, masks, JSON;
* **HTTP**: a real ``uvicorn backend.main:app`` on loopback, multipart upload, 1 / 4 / 16
  concurrent clients (``overlays=false``);
* **first request vs re-threshold** (``benchmarks/explore_latency.py``): over HTTP with overlays in
  the app's format (JPEG), a new image each time (the model runs) against the same image with
  another threshold (answered from the map cache), p50 / p95, and overlay time against model time.

Printed: p50 / p95 latency, throughput, and the speed-up over the baseline (p50 latency ratio,
and the throughput ratio for concurrent clients). ``--json PATH`` writes the rows.

Also printed, per architecture, the **roofline** of the fast path (``benchmarks/roofline.py``): its
FLOPs (linear layers and attention, counted as in ``trainer/train/flops.py``), the rates this CPU
reaches in the same run for a plain GEMM of the model's shapes and for fused SDPA at its sequence
length, the resulting floor (the fast path's time if every op ran at those rates) and so the largest
speed-up over the measured baseline that any implementation of the fast path could reach on this
machine.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from backend.analysis.params import AttentionParams
from backend.analysis.service import AttentionService
from backend.api.responses import analysis_dict, json_response
from backend.settings import Settings
from benchmarks.explore_latency import ExploreResult, explore_latency, print_explore
from benchmarks.roofline import print_roofline, roofline
from benchmarks.serving import uvicorn_process
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import DinoViT, build_vit

ARCHS = {"vit_s16": ("vit_small", 16), "vit_s8": ("vit_small", 8)}
TINY_ARCHS = {"tiny_p8": ("tiny", 8)}


@dataclass
class Row:
    arch: str
    path: str
    clients: int
    n: int
    p50_ms: float
    p95_ms: float
    req_per_s: float
    speedup_latency: float = 0.0
    speedup_throughput: float = 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def make_row(arch: str, path: str, clients: int, latencies_s: list[float], wall_s: float) -> Row:
    ms = [v * 1e3 for v in latencies_s]
    return Row(
        arch, path, clients, len(ms), statistics.median(ms), percentile(ms, 95), len(ms) / wall_s
    )


def time_calls(
    fn: Callable[[], object], repeats: int, warmup: int = 2
) -> tuple[list[float], float]:
    for _ in range(warmup):
        fn()
    latencies, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - start


def build_model(name: str, patch: int) -> DinoViT:
    torch.manual_seed(0)
    if name == "tiny":
        return (
            build_vit(patch_size=patch, embed_dim=64, depth=2, num_heads=1)
            .eval()
            .requires_grad_(False)
        )
    return build_vit(name, patch).eval().requires_grad_(False)


def sample_png(size: int) -> bytes:
    yy, xx = np.mgrid[0:size, 0:size]
    arr = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], -1).astype(
        np.uint8
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def baseline_fn(model: DinoViT, x: torch.Tensor) -> Callable[[], object]:
    """The authors' way: all-explicit attention, full last-block weights, no inference_mode."""

    def run() -> torch.Tensor:
        model.set_fused_attention(False)
        try:
            return model.get_last_selfattention(x)[0, :, 0, 1:]
        finally:
            model.set_fused_attention(True)

    return run


def fast_fn(model: DinoViT, x: torch.Tensor) -> Callable[[], object]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model.get_cls_attention(x)

    return run


def service_fn(
    service: AttentionService, model_id: str, png: bytes, size: int
) -> Callable[[], object]:
    params = AttentionParams(model=model_id, image_size=size, resize="square", overlays=False)

    def run() -> object:
        loaded = service.model_for(params)
        return json_response(analysis_dict(service.analyse(loaded, params, png, None)))

    return run


def in_process_rows(
    arch: str, model: DinoViT, service: AttentionService, png: bytes, args
) -> list[Row]:
    x = torch.randn(1, 3, args.size, args.size)
    rows = []
    for label, fn in (
        ("baseline (all explicit)", baseline_fn(model, x)),
        ("fast path (model only)", fast_fn(model, x)),
        ("service in-process", service_fn(service, arch, png, args.size)),
    ):
        lat, wall = time_calls(fn, args.repeats)
        rows.append(make_row(arch, label, 1, lat, wall))
        print_row(rows[-1], flush=True)
    return rows


def http_rows(arch: str, url: str, png: bytes, args) -> list[Row]:
    data = {"model": arch, "image_size": str(args.size), "resize": "square", "overlays": "false"}

    def one(_: int) -> float:
        with httpx.Client(timeout=600) as client:
            t0 = time.perf_counter()
            r = client.post(
                f"{url}/attention", files={"image": ("x.png", png, "image/png")}, data=data
            )
            r.raise_for_status()
            return time.perf_counter() - t0

    one(0)  # warm-up (loads the model in the server)
    one(0)
    rows = []
    for clients in args.clients:
        total = max(clients, args.repeats)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            lat = list(pool.map(one, range(total)))
        rows.append(make_row(arch, "HTTP", clients, lat, time.perf_counter() - start))
        print_row(rows[-1], flush=True)
    return rows


def add_speedups(rows: list[Row]) -> None:
    for row in rows:
        base = next(r for r in rows if r.arch == row.arch and r.path.startswith("baseline"))
        row.speedup_latency = base.p50_ms / row.p50_ms
        row.speedup_throughput = row.req_per_s / base.req_per_s


def print_row(r: Row, flush: bool = False) -> None:
    extra = (
        f"  x{r.speedup_latency:5.2f} latency  x{r.speedup_throughput:5.2f} throughput"
        if r.speedup_latency
        else ""
    )
    print(
        f"{r.arch:8s} {r.path:26s} clients={r.clients:<3d} n={r.n:<3d} p50={r.p50_ms:9.1f} ms "
        f"p95={r.p95_ms:9.1f} ms  {r.req_per_s:7.2f} req/s{extra}",
        flush=flush,
    )


def write_checkpoints(folder: Path, models: dict[str, DinoViT]) -> None:
    for name, model in models.items():
        export_backbone_safetensors(
            model, folder / f"{name}.safetensors", arch=name, epoch=None, trained=False
        )


def service_for(folder: Path, args) -> AttentionService:
    settings = Settings(
        checkpoint_dir=folder,
        cache_dir=folder / "cache",
        allow_downloads=False,
        device="cpu",
        precision=args.precision,
        max_loaded_models=4,
        max_concurrency=1,
        queue_timeout_s=3600,
        max_image_size=max(2048, args.size),
    )
    return AttentionService(settings)


def server_env(folder: Path, args, default: str) -> dict[str, str]:
    return {
        "DINO_CHECKPOINT_DIR": str(folder),
        "DINO_CACHE_DIR": str(folder / "cache"),
        "DINO_DEVICE": "cpu",
        "DINO_ALLOW_DOWNLOADS": "false",
        "DINO_PRECISION": args.precision,
        "DINO_DEFAULT_MODEL": default,
        "DINO_MAX_LOADED_MODELS": "4",
        "DINO_MAX_CONCURRENCY": str(args.server_concurrency),
        "DINO_QUEUE_TIMEOUT_S": "3600",
        "DINO_MAX_IMAGE_SIZE": str(max(2048, args.size)),
    }


def run(args: argparse.Namespace) -> list[Row]:
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = TINY_ARCHS if args.tiny else {k: v for k, v in ARCHS.items() if k in args.archs}
    models = {name: build_model(*spec) for name, spec in archs.items()}
    png = sample_png(args.size)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}x{args.size}, "
        f"service precision {args.precision}",
        flush=True,
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_checkpoints(folder, models)
        service = service_for(folder, args)
        for name, model in models.items() if not args.explore else ():
            rows += in_process_rows(name, model, service, png, args)
            args.rooflines.append(roofline(name, model, args.size, args.precision, rows[-3].p50_ms))
            print_roofline(args.rooflines[-1])
        if not args.no_http:
            with uvicorn_process(
                server_env(folder, args, next(iter(models))), timeout_s=180
            ) as url:
                for name in models:
                    rows += [] if args.explore else http_rows(name, url, png, args)
                    args.explores.append(
                        explore_latency(name, url, args.size, args.repeats, args.overlay_format)
                    )
                    print_explore(args.explores[-1])
    if not args.explore:
        add_speedups(rows)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="vit_s16,vit_s8", help=f"comma list of {', '.join(ARCHS)}")
    p.add_argument("--size", type=int, default=480, help="square input side in pixels")
    p.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="timed calls per in-process path / min HTTP requests",
    )
    p.add_argument("--clients", default="1,4,16", help="comma list of concurrent HTTP clients")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8", "auto"),
        default="fp32",
        help="the service's precision (a comma list runs benchmarks.precision_modes)",
    )
    p.add_argument(
        "--server-concurrency", type=int, default=1, help="DINO_MAX_CONCURRENCY of the HTTP server"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads in this process (0: torch default)"
    )
    p.add_argument("--quick", action="store_true", help="3 repeats, 1 and 4 clients")
    p.add_argument("--tiny", action="store_true", help="a tiny model at 64 px (smoke test)")
    p.add_argument("--no-http", action="store_true", help="in-process paths only")
    p.add_argument(
        "--explore", action="store_true", help="only first request vs re-threshold over HTTP"
    )
    p.add_argument(
        "--overlay-format",
        choices=("png", "jpeg", "webp"),
        default="jpeg",
        help="overlay_format of the first-request / re-threshold measurement (the app's: jpeg)",
    )
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in args.archs if a not in ARCHS]
    if unknown:
        p.error(f"unknown arch {unknown[0]!r}; choose from {', '.join(ARCHS)}")
    args.clients = [int(c) for c in args.clients.split(",")]
    args.rooflines, args.explores = [], []
    if args.quick:
        args.repeats, args.clients = 3, [1, 4]
    if args.tiny:
        args.size = min(args.size, 64)
    return args


def several_precisions(argv: list[str]) -> bool:
    """Whether ``--precision`` names a comma list (then benchmarks.precision_modes runs)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--precision=") else None
        if arg == "--precision" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None and "," in value:
            return True
    return False


def main(argv: list[str] | None = None) -> list[Row]:
    raw = sys.argv[1:] if argv is None else argv
    if several_precisions(raw):
        from benchmarks import precision_modes

        precision_modes.main(raw)
        return []
    args = parse_args(argv)
    rows = run(args)
    print("\nsummary (speed-up over the all-explicit baseline):")
    for row in rows:
        print_row(row)
    for line in args.rooflines:
        print_roofline(line)
    explores: list[ExploreResult] = args.explores
    for result in explores:
        print_explore(result)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "rooflines": [asdict(r) for r in args.rooflines],
                    "explore": [asdict(r) for r in explores],
                },
                indent=2,
            )
        )
    return rows


if __name__ == "__main__":
    main()
