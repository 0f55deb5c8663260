"""DINOv2 ViT-S/14 at 518 px against DINO ViT-S/16 at 480 px, through the service path.

    python -m benchmarks.dinov2_latency                 # 10 timed requests per row
    python -m benchmarks.dinov2_latency --repeats 20 --json rows.json
    python -m benchmarks.dinov2_latency --tiny          # a seconds-long smoke run

Random weights (timing does not depend on them), written to files and loaded by the service's
registry like any checkpoint. Each request runs ``AttentionService.analyse`` and the JSON reply
in-process: PNG decode, resize (square), model, masks, and with ``overlays`` the pictures. The
map cache is off, so every request runs the model. Rows: ViT-S/16 (DINO, 480 px: 900 patches),
ViT-S/14 (DINOv2, 518 px: 1369 patches) and ViT-S/14 with 4 registers, each with overlays off
and on. The models take turns request by request, so load from other processes slows them alike.
Printed: p50 / p95 latency, requests per second, and the p50 of the process CPU time per request
(all threads; little affected by other processes on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from backend.analysis.params import AttentionParams
from backend.analysis.service import AttentionService
from backend.api.responses import analysis_dict, json_response
from backend.settings import Settings
from benchmarks.attention_latency import Row, make_row, print_row, sample_png
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.dinov2 import Dinov2Arch, build_dinov2
from trainer.model.vit import DinoViT, build_vit


def models(tiny: bool) -> dict[str, tuple[DinoViT, int]]:
    """name -> (random model, image size)."""
    torch.manual_seed(0)
    dim, depth, heads = (64, 2, 1) if tiny else (384, 12, 6)
    grid = 37
    dino = build_vit(patch_size=16, embed_dim=dim, depth=depth, num_heads=heads)
    out = {"dino_vits16": (dino, 64 if tiny else 480)}
    for registers in (0, 4):
        arch = Dinov2Arch(dim, depth, heads, registers, 4 * dim, False, grid)
        name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
        out[name] = (build_dinov2(arch), 70 if tiny else 518)
    return out


def request_fn(
    service: AttentionService, params: AttentionParams, png: bytes
) -> Callable[[], object]:
    """One request through the service path: analyse and serialise the JSON reply."""
    loaded = service.model_for(params)

    def call() -> object:
        return json_response(analysis_dict(service.analyse(loaded, params, png, None)))

    return call


def interleaved(
    calls: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds per call, round-robin after 2 warm-up rounds.

    Taking turns makes load from other processes slow every row alike; the CPU time (all of this
    process's threads) is much less sensitive to such load than the wall time.
    """
    for _ in range(2):
        for call in calls.values():
            call()
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            call()
            times[name][0].append(time.perf_counter() - t0)
            times[name][1].append(time.process_time() - c0)
    return times


def run(args: argparse.Namespace) -> list[Row]:
    specs = models(args.tiny)
    rows: list[Row] = []
    cpu_ms: dict[int, float] = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, (model, _) in specs.items():
            export_backbone_safetensors(
                model.eval(), folder / f"{name}.safetensors", arch=name, epoch=None, trained=False
            )
        settings = Settings(
            checkpoint_dir=folder,
            cache_dir=folder / "cache",
            allow_downloads=False,
            device="cpu",
            max_loaded_models=len(specs),
            max_concurrency=1,
            queue_timeout_s=3600,
            cache_entries=0,
        )
        service = AttentionService(settings)
        for overlays in (False, True):
            calls = {}
            for name, (_, size) in specs.items():
                params = AttentionParams(
                    model=name, image_size=size, resize="square", overlays=overlays
                )
                calls[name] = request_fn(service, params, sample_png(size))
            for name, (lat, cpu) in interleaved(calls, args.repeats).items():
                label = f"{specs[name][1]}px overlays={'on' if overlays else 'off'}"
                rows.append(make_row(name, label, 1, lat, sum(lat)))
                cpu_ms[len(rows) - 1] = statistics.median(cpu) * 1e3
                print_row(rows[-1], flush=True)
                print(
                    f"{'':8s} {'':26s} process CPU time p50={cpu_ms[len(rows) - 1]:9.1f} ms",
                    flush=True,
                )
    args.cpu_ms = [cpu_ms[i] for i in range(len(rows))]
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--repeats", type=int, default=10, help="timed requests per row (after 2 warm-up rounds)"
    )
    p.add_argument("--tiny", action="store_true", help="tiny models at 64-70 px (smoke test)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    rows = run(args)
    if args.json:
        out = [{**asdict(r), "cpu_p50_ms": c} for r, c in zip(rows, args.cpu_ms, strict=True)]
        args.json.write_text(json.dumps(out, indent=2))
    return rows


if __name__ == "__main__":
    main()
