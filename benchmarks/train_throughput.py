"""End-to-end DINO training throughput: data loading, augmentation, the real training step.

    python -m benchmarks.train_throughput --synthetic               # ViT-S/16, 2x224+10x96
    python -m benchmarks.train_throughput --synthetic --baseline    # the DINO authors' setup
    python -m benchmarks.train_throughput --synthetic --compare --rounds 2  # both, interleaved
    python -m benchmarks.train_throughput --arch vit_tiny --global_crops_size 96 \\
        --local_crops_size 48 --local_crops_number 4 --batch_size_per_gpu 16 --synthetic \\
        --device cpu --compare

Each measured step is the trainer's own: ``trainer.train.engine.batch_crops`` (decode and
multi-crop on the device, or the loader's crops) then ``trainer.train.engine.train_step``
(teacher and student forward, DINO loss, backward, per-parameter clipping, optimizer, EMA),
on models, loss and optimizer built by ``trainer.train.build.build_context`` and batches
collated by the trainer's collates. Two paths:

* **default** (fast): workers only read (or, with ``--decode_on workers``, decode) JPEGs;
  the step decodes them in batches (nvjpeg on CUDA) and ``GPUMultiCrop`` makes all crops
  on the device; bf16 autocast (fp32 on CPU); fused SDPA attention; fused AdamW (as the
  trainer); ``torch.compile`` on CUDA.
* **baseline** (``--baseline``): PIL multi-crop in the workers, fp16 autocast with a loss
  scaler on CUDA (fp32 on CPU), no compile, explicit attention, non-fused AdamW.

Printed per path: img/s, TFLOP/s and MFU (FLOPs from ``trainer.train.flops``), peak memory,
the fraction of wall time blocked on the DataLoader, and where the time goes (data wait,
decode+augment, forward+backward+step; CUDA events on GPUs). ``--json`` writes it all.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from benchmarks.train_args import add_data_args, add_model_args, add_run_args
from benchmarks.train_data import build_dataset
from benchmarks.train_report import (
    PhaseClock,
    device_name,
    peak_memory_gb,
    peak_tflops,
    print_summary,
    summarize,
    synchronize,
)
from trainer.model.device import pick_device
from trainer.train.build import ContextOptions, build_context, build_gpu_multicrop
from trainer.train.compile import compile_models, dynamo_graph_count
from trainer.train.config import make_config
from trainer.train.engine import TrainContext, batch_crops, train_step
from trainer.train.flags import TrainConfig
from trainer.train.flops import dino_step_flops_per_image
from trainer.train.loss import N_TEACHER_VIEWS

logger = logging.getLogger("benchmarks.train_throughput")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    add_data_args(p)
    add_run_args(p)
    args = p.parse_args(argv)
    if not args.synthetic and not args.data_path:
        p.error("give --data_path DIR or --synthetic")
    return args


@dataclass
class PathSettings:
    """What distinguishes the fast path from the authors' baseline."""

    name: str
    gpu_augment: bool
    compile: bool
    precision: str
    fused_attention: bool
    fused_optimizer: bool
    decode_on_device: bool


def path_settings(args: argparse.Namespace, device: torch.device, baseline: bool) -> PathSettings:
    """Settings of the default or baseline path on ``device``; explicit flags override them."""
    cuda = device.type == "cuda"
    if baseline:
        settings = PathSettings(
            "baseline", False, False, "fp16" if cuda else "fp32", False, False, False
        )
    else:
        bf16 = cuda and torch.cuda.is_bf16_supported()
        precision = "bf16" if bf16 else ("fp16" if cuda else "fp32")
        settings = PathSettings("default", True, cuda, precision, True, True, cuda)
    if args.precision != "auto":
        settings.precision = args.precision
    if args.gpu_augment is not None:
        settings.gpu_augment = args.gpu_augment
    if args.compile is not None:
        settings.compile = args.compile
    if args.decode_on != "auto":
        settings.decode_on_device = args.decode_on == "device"
    return settings


def bench_config(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """A validated trainer config: one epoch, no lr warm-up, last layer not frozen."""
    return make_config(
        **overrides,
        arch=args.arch,
        patch_size=args.patch_size,
        out_dim=args.out_dim,
        global_crops_size=args.global_crops_size,
        local_crops_size=args.local_crops_size,
        local_crops_number=args.local_crops_number,
        batch_size_per_gpu=args.batch_size_per_gpu,
        epochs=1,
        warmup_epochs=0,
        freeze_last_layer=0,
        seed=args.seed,
        data_path=args.data_path or "synthetic",
        num_workers=args.num_workers or 0,
        device="cpu",
        output_dir=".",
    )


def build_loader(
    args: argparse.Namespace,
    settings: PathSettings,
    cfg: TrainConfig,
    steps: int,
    device: torch.device,
) -> DataLoader:
    """Random draws with replacement for ``steps`` batches, with the trainer's collates."""
    dataset, collate = build_dataset(args, settings.gpu_augment, settings.decode_on_device, cfg)
    workers = args.num_workers
    if workers is None:
        workers = max(1, len(os.sched_getaffinity(0)) - 1)
    sampler = RandomSampler(
        dataset,
        replacement=True,
        num_samples=steps * cfg.batch_size_per_gpu,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    extra: dict[str, Any] = {}
    if workers:
        extra = {"persistent_workers": True, "prefetch_factor": args.prefetch_factor}
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size_per_gpu,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        collate_fn=collate,
        **extra,
    )


def make_context(
    args: argparse.Namespace,
    cfg: TrainConfig,
    settings: PathSettings,
    device: torch.device,
    total_steps: int,
) -> TrainContext:
    """The trainer's context (``build_context``), with this path's attention and compile."""

    def prepare(student: torch.nn.Module, teacher: torch.nn.Module):
        for model in (student, teacher):
            model.backbone.set_fused_attention(settings.fused_attention)
        if settings.compile:
            compile_models(student, teacher, backend=args.compile_backend, mode=args.compile_mode)
        return student, teacher

    multicrop = build_gpu_multicrop(cfg, device) if settings.gpu_augment else None
    options = ContextOptions(
        prepare=prepare, fused_optimizer=settings.fused_optimizer, gpu_multicrop=multicrop
    )
    return build_context(cfg, device, settings.precision, total_steps, options)


@dataclass
class PathRun:
    """One path's live state: settings, training context, endless batches, step counter."""

    settings: PathSettings
    ctx: TrainContext
    batches: Iterator
    step: int = 0
    windows: list[dict[str, float]] = field(default_factory=list)
    warmup_s: float = 0.0
    loss_sum: torch.Tensor | None = None


def run_steps(run: PathRun, steps: int, clock: PhaseClock | None = None) -> float:
    """``steps`` training steps; returns the host seconds spent blocked on the DataLoader."""
    waited = 0.0
    ctx = run.ctx
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(run.batches)
        waited += time.perf_counter() - before
        marks = [clock.mark()] if clock else []
        crops, _, _ = batch_crops(ctx, batch, ctx.config.seed * 1_000_003 + run.step)
        if clock:
            marks.append(clock.mark())
        loss, _, _ = train_step(ctx, crops, 0, run.step)
        if clock:
            marks.append(clock.mark())
            clock.add(marks)
        run.loss_sum = loss.float() if run.loss_sum is None else run.loss_sum + loss.float()
        run.step += 1
    return waited


def measure_window(run: PathRun, iters: int) -> dict[str, float]:
    """Time ``iters`` steps: wall, data wait, and device (or host) time of augment and step."""
    device = run.ctx.device
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = PhaseClock(device)
    start = time.perf_counter()
    waited = run_steps(run, iters, clock)
    synchronize(device)
    wall = time.perf_counter() - start
    spans = clock.spans_s().sum(axis=0)
    window = {
        "wall_s": wall,
        "data_wait_s": waited,
        "augment_s": float(spans[0]),
        "step_s": float(spans[1]),
        "images": iters * run.ctx.config.batch_size_per_gpu,
        "peak_memory_gb": peak_memory_gb(device),
    }
    run.windows.append(window)
    return window


def start_path(
    args: argparse.Namespace, device: torch.device, baseline: bool, total_steps: int
) -> PathRun:
    """Build one path (data, models) and run its untimed warm-up steps."""
    settings = path_settings(args, device, baseline)
    cfg = bench_config(args)
    loader = build_loader(args, settings, cfg, total_steps + 2, device)
    ctx = make_context(args, cfg, settings, device, total_steps + 1)
    run = PathRun(settings, ctx, iter(loader))
    start = time.perf_counter()
    run_steps(run, args.warmup)
    synchronize(device)
    run.warmup_s = time.perf_counter() - start
    logger.info("%s path ready (%s); warm-up %.1fs", settings.name, settings, run.warmup_s)
    return run


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested path(s), interleaving timed windows round by round."""
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    total_steps = args.warmup + args.iters * args.rounds
    paths = [False, True] if args.compare else [args.baseline]
    graphs_before = dynamo_graph_count()
    runs = [start_path(args, device, baseline, total_steps) for baseline in paths]
    for _ in range(args.rounds):
        for run in runs:
            measure_window(run, args.iters)
    flops = dino_step_flops_per_image(
        args.arch,
        args.patch_size,
        args.global_crops_size,
        args.local_crops_size,
        args.local_crops_number,
        out_dim=args.out_dim,
    )
    peaks = peak_tflops(args.peak_tflops, device)
    results = [summarize(run, flops, peaks) for run in runs]
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "flops_per_image": flops,
        "peak_tflops_spec": peaks[0],
        "peak_tflops_practical": peaks[1],
        "compiled_graphs": dynamo_graph_count() - graphs_before,
        "results": results,
    }


def random_crops(cfg: TrainConfig, device: torch.device, seed: int) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    sizes = [cfg.global_crops_size] * N_TEACHER_VIEWS
    sizes += [cfg.local_crops_size] * cfg.local_crops_number
    return [torch.randn(cfg.batch_size_per_gpu, 3, s, s, device=device, generator=g) for s in sizes]


def check_equivalence(args: argparse.Namespace) -> dict[str, Any]:
    """Eager vs compiled default path from the same weights on the same crops."""
    device = pick_device(args.device)
    settings = path_settings(args, device, baseline=False)
    cfg = bench_config(args, drop_path_rate=0.0)  # drop-path draws differ eager vs compiled
    contexts = []
    for compiled in (False, True):
        path = PathSettings(**{**asdict(settings), "compile": compiled, "gpu_augment": False})
        contexts.append(make_context(args, cfg, path, device, args.iters))
    losses: list[list[float]] = [[], []]
    for it in range(args.iters):
        crops = random_crops(cfg, device, args.seed + it)
        for ctx, record in zip(contexts, losses, strict=True):
            record.append(float(train_step(ctx, crops, 0, it)[0]))
    eager, compiled = (dict(ctx.student_module.named_parameters()) for ctx in contexts)
    weight_gap = max(float((eager[k] - compiled[k]).detach().float().abs().max()) for k in eager)
    loss_gap = max(abs(a - b) for a, b in zip(*losses, strict=True))
    tolerance = 1e-4 if settings.precision == "fp32" else 2e-2  # relative to the loss
    ok = loss_gap <= tolerance * max(1.0, max(abs(v) for v in losses[0]))
    print(
        f"equivalence ({settings.precision}, {args.compile_backend}): losses eager {losses[0]} "
        f"compiled {losses[1]}; max |loss gap| {loss_gap:.2e}, max |weight gap| "
        f"{weight_gap:.2e} -> {'OK' if ok else 'MISMATCH'}"
    )
    return {
        "device": device_name(device),
        "precision": settings.precision,
        "losses_eager": losses[0],
        "losses_compiled": losses[1],
        "max_loss_gap": loss_gap,
        "max_weight_gap": weight_gap,
        "ok": ok,
    }


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.check_equivalence:
        report = check_equivalence(args)
        _write_json(args.json, report)
        return report
    report = benchmark(args)
    print(
        f"device: {report['device']}, torch {report['torch']}, "
        f"{report['flops_per_image'] / 1e9:.1f} GFLOP/img, "
        f"graphs compiled: {report['compiled_graphs']}"
    )
    for result in report["results"]:
        print_summary(result)
    if len(report["results"]) == 2:
        fast, base = report["results"]
        print(f"speed-up default/baseline: {fast['img_per_s'] / base['img_per_s']:.2f}x")
    _write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
