"""End-to-end DINO training throughput: data loading, augmentation, the real training step.

    python benchmarks/train_throughput.py --synthetic                      # ViT-S/16, 2x224+10x96, fast path
    python benchmarks/train_throughput.py --synthetic --baseline           # the DINO authors' configuration
    python benchmarks/train_throughput.py --synthetic --compare --rounds 2 # both, interleaved, one process
    python benchmarks/train_throughput.py --arch vit_tiny --global_crops_size 96 --local_crops_size 48 \\
        --local_crops_number 4 --batch_size_per_gpu 16 --synthetic --device cpu --compare

Each measured step runs ``trainer.train.engine.train_step`` (teacher and student forward, DINO loss,
backward, per-parameter clipping, optimizer, EMA) on crops made by one of two pipelines:

* **default** (fast) path: DataLoader workers only read (or, on CPU, decode) JPEGs; the main
  process decodes them in batches (nvjpeg on CUDA) and ``trainer.data.gpu_augment.GPUMultiCrop``
  makes all crops on the device; bf16 autocast (fp32 on CPU); fused SDPA attention;
  ``trainer.train.compile.compile_models`` (on CUDA); fused AdamW (on CUDA).
* **baseline** (``--baseline``): the authors' configuration: PIL multi-crop in the workers,
  fp16 autocast with a loss scaler on CUDA (fp32 on CPU), no compile, explicit attention,
  non-fused AdamW.

Printed per path: img/s, achieved TFLOP/s and MFU (FLOPs from ``trainer.train.flops``), peak memory
(``torch.cuda.max_memory_allocated`` or the process RSS on CPU), the fraction of wall time
spent blocked on the DataLoader, and where the time goes (data wait, decode+augment,
forward+backward+step; device time from CUDA events on GPUs). ``--json`` writes it all.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

from trainer.data.augment import DataAugmentationDINO  # noqa: E402
from trainer.data.dataset import SafeImageDataset, collate_skip_none, scan_image_folder  # noqa: E402
from trainer.data.jpeg_batch import (  # noqa: E402
    EncodedImageFolder,
    collate_bytes,
    decode_jpegs,
    decode_with_pil,
    drop_undecoded,
)
from trainer.model.device import pick_device  # noqa: E402
from trainer.run import build_schedules, build_student_teacher, seed_everything  # noqa: E402
from trainer.train.compile import compile_models, dynamo_graph_count  # noqa: E402
from trainer.train.config import TrainConfig, bool_flag, make_config  # noqa: E402
from trainer.train.engine import TrainContext, train_step  # noqa: E402
from trainer.train.flops import dino_step_flops_per_image, mfu  # noqa: E402
from trainer.train.loss import DINOLoss  # noqa: E402
from trainer.train.optim import build_optimizer, get_params_groups  # noqa: E402

logger = logging.getLogger("benchmarks.train_throughput")
# Dense bf16/fp16 tensor-core peak (spec sheet, SXM) and the ~800 TFLOP/s matmuls reach in practice.
PEAK_TFLOPS_SPEC = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
PEAK_TFLOPS_MEASURED = {"H100": 800.0, "H200": 800.0, "A100": 280.0}
SYNTHETIC_SIZE = (500, 375)  # about the mean ImageNet image


# -- command line --------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_small", help="vit_tiny, vit_small or vit_base")
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--out_dim", type=int, default=65536)
    p.add_argument("--global_crops_size", type=int, default=224)
    p.add_argument("--local_crops_size", type=int, default=96)
    p.add_argument("--local_crops_number", type=int, default=10)
    p.add_argument("--batch_size_per_gpu", type=int, default=64)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto: bf16 (fp16 for --baseline) on CUDA, fp32 on CPU")
    p.add_argument("--data_path", default=None, help="image folder (ImageFolder or flat); or use --synthetic")
    p.add_argument("--synthetic", action="store_true", help="JPEGs generated in memory (no data needed)")
    p.add_argument("--synthetic_images", type=int, default=512, help="distinct synthetic JPEGs (cycled)")
    p.add_argument("--synthetic_size", type=int, nargs=2, default=SYNTHETIC_SIZE, metavar=("W", "H"),
                   help="width and height of the synthetic JPEGs")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    p.add_argument("--iters", type=int, default=20, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=1, help="timed windows per path (interleaved with --compare)")
    p.add_argument("--num_workers", type=int, default=None, help="DataLoader workers (default: CPU cores - 1)")
    p.add_argument("--prefetch_factor", type=int, default=4, help="batches each worker prepares ahead")
    p.add_argument("--baseline", action="store_true", help="measure only the authors' configuration")
    p.add_argument("--compare", action="store_true", help="measure the default and the baseline path, interleaved")
    p.add_argument("--gpu_augment", type=bool_flag, default=None, help="override the path's augmentation")
    p.add_argument("--compile", type=bool_flag, default=None, help="override the path's torch.compile setting")
    p.add_argument("--compile_mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--compile_backend", default="inductor", help="torch.compile backend (aot_eager for tests)")
    p.add_argument("--check_equivalence", action="store_true",
                   help="instead of timing: --iters steps of the eager and the compiled default path on the same "
                        "random crops (no drop path); prints the loss and weight differences")
    p.add_argument("--decode_on", default="auto", choices=("auto", "device", "workers"),
                   help="GPU path: decode JPEGs on the device (nvjpeg) or in the workers (PIL draft)")
    p.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of the main process")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    if not args.synthetic and not args.data_path:
        p.error("give --data_path DIR or --synthetic")
    return args


# -- the two paths -------------------------------------------------------------------------
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
        settings = PathSettings("baseline", False, False, "fp16" if cuda else "fp32", False, False, False)
    else:
        bf16 = cuda and torch.cuda.is_bf16_supported()
        settings = PathSettings("default", True, cuda, "bf16" if bf16 else ("fp16" if cuda else "fp32"),
                                True, cuda, cuda)
    if args.precision != "auto":
        settings.precision = args.precision
    if args.gpu_augment is not None:
        settings.gpu_augment = args.gpu_augment
    if args.compile is not None:
        settings.compile = args.compile
    if args.decode_on != "auto":
        settings.decode_on_device = args.decode_on == "device"
    return settings


def bench_config(args: argparse.Namespace, total_steps: int, **overrides: Any) -> TrainConfig:
    """A validated trainer config for the benchmark: one epoch of ``total_steps``, last layer not frozen."""
    return make_config(**overrides, arch=args.arch, patch_size=args.patch_size, out_dim=args.out_dim,
                       global_crops_size=args.global_crops_size, local_crops_size=args.local_crops_size,
                       local_crops_number=args.local_crops_number, batch_size_per_gpu=args.batch_size_per_gpu,
                       epochs=1, warmup_epochs=0, freeze_last_layer=0, seed=args.seed,
                       data_path=args.data_path or "synthetic", num_workers=args.num_workers or 0,
                       device="cpu", output_dir=".")


# -- data ----------------------------------------------------------------------------------
def synthetic_jpegs(count: int, size: tuple[int, int] = SYNTHETIC_SIZE, seed: int = 0) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields plus grain) encoded in memory at quality 90."""
    rng = np.random.default_rng(seed)
    width, height = size
    blobs = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        grain = rng.integers(-12, 13, size=smooth.shape, dtype=np.int16)
        image = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


class BlobImages:
    """``key -> PIL image`` over in-memory encoded images (a picklable loader for SafeImageDataset)."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs

    def __call__(self, key: int) -> Image.Image:
        with Image.open(io.BytesIO(self.blobs[key])) as image:
            return image.convert("RGB")


class EncodedImages(Dataset):
    """``(encoded bytes, index)`` from in-memory blobs (the files' twin is ``jpeg_batch.EncodedImageFolder``)."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        return self.blobs[index], index


class DecodeInWorkers:
    """Collate for the GPU path on CPU: decode (PIL draft mode) in the worker, not the main process."""

    def __init__(self, draft_size: int) -> None:
        self.draft_size = draft_size

    def __call__(self, batch: list[tuple[bytes, int]]) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        blobs, indices = collate_bytes(batch)
        return [decode_with_pil(b, self.draft_size) for b in blobs], indices


def build_dataset(args: argparse.Namespace, settings: PathSettings, cfg: TrainConfig) -> tuple[Dataset, Callable]:
    """(dataset, collate) for the path: encoded bytes for the GPU path, PIL multi-crop otherwise."""
    blobs = synthetic_jpegs(args.synthetic_images, tuple(args.synthetic_size), args.seed) if args.synthetic else None
    samples = None if args.synthetic else scan_image_folder(args.data_path)[0]
    if settings.gpu_augment:
        dataset = EncodedImages(blobs) if blobs is not None else EncodedImageFolder(samples)
        collate = collate_bytes if settings.decode_on_device else DecodeInWorkers(cfg.global_crops_size)
        return dataset, collate
    augment = DataAugmentationDINO(cfg.global_crops_scale, cfg.local_crops_scale, cfg.local_crops_number,
                                   cfg.global_crops_size, cfg.local_crops_size)
    if blobs is not None:
        return SafeImageDataset([(i, 0) for i in range(len(blobs))], augment, loader=BlobImages(blobs)), \
            collate_skip_none
    return SafeImageDataset(samples, augment), collate_skip_none


def build_loader(dataset: Dataset, collate: Callable, cfg: TrainConfig, steps: int, workers: int,
                 device: torch.device, prefetch_factor: int) -> DataLoader:
    """The trainer's loader settings (persistent workers, prefetch, pinned memory) over endless random draws."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=steps * cfg.batch_size_per_gpu,
                            generator=torch.Generator().manual_seed(cfg.seed))
    extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if workers else {}
    return DataLoader(dataset, batch_size=cfg.batch_size_per_gpu, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=True, collate_fn=collate, **extra)


# -- model side ----------------------------------------------------------------------------
def build_context(cfg: TrainConfig, settings: PathSettings, device: torch.device, total_steps: int,
                  compile_mode: str | None, compile_backend: str = "inductor") -> TrainContext:
    """Student, teacher, loss, optimizer and schedules as ``trainer.run`` builds them, per ``settings``."""
    seed_everything(cfg.seed)
    student, teacher = build_student_teacher(cfg)
    student, teacher = student.to(device), teacher.to(device)
    for model in (student, teacher):
        model.backbone.set_fused_attention(settings.fused_attention)
    if settings.compile:
        compile_models(student, teacher, backend=compile_backend, mode=compile_mode)
    dino_loss = DINOLoss(cfg.out_dim, cfg.local_crops_number + 2, cfg.warmup_teacher_temp, cfg.teacher_temp,
                         cfg.warmup_teacher_temp_epochs, cfg.epochs).to(device)
    optimizer = build_optimizer(cfg.optimizer, get_params_groups(student), fused=settings.fused_optimizer)
    scaler = torch.amp.GradScaler(device.type) if settings.precision == "fp16" else None
    gpu_multicrop = None
    if settings.gpu_augment:
        from trainer.data.gpu_augment import GPUMultiCrop

        gpu_multicrop = GPUMultiCrop(cfg.global_crops_scale, cfg.local_crops_scale, cfg.local_crops_number,
                                     cfg.global_crops_size, cfg.local_crops_size).to(device)
    return TrainContext(cfg, student, teacher, student, teacher, dino_loss, optimizer,
                        build_schedules(cfg, total_steps, 1), device, settings.precision, scaler, None, gpu_multicrop)


def make_crops(ctx: TrainContext, batch: Any, settings: PathSettings, seed: int) -> list[torch.Tensor]:
    """Crops on the device: GPU multi-crop from encoded/decoded images, or copy of the PIL crops."""
    if ctx.gpu_multicrop is None:
        return [crop.to(ctx.device, non_blocking=True) for crop in batch.images]
    images, indices = batch
    if settings.decode_on_device:
        images = decode_jpegs(images, ctx.device)
    images, _, _ = drop_undecoded(images, indices)
    images = [image.to(ctx.device, non_blocking=True) for image in images]
    generator = torch.Generator(device=ctx.device).manual_seed(seed)
    return ctx.gpu_multicrop(images, generator=generator)


# -- timing --------------------------------------------------------------------------------
class PhaseClock:
    """Time spans of a step's phases: CUDA events on GPUs (no host sync), ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[list[Any]] = []

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, marks: list[Any]) -> None:
        self.marks.append(marks)

    def spans_s(self) -> np.ndarray:
        """(steps, phases) seconds between consecutive marks (call after a device sync)."""
        if not self.marks:
            return np.zeros((0, 0))
        if self.cuda:
            return np.array([[a.elapsed_time(b) / 1e3 for a, b in zip(m[:-1], m[1:], strict=True)]
                             for m in self.marks])
        return np.array([np.diff(m) for m in self.marks])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class PathRun:
    """One path's live state: settings, training context, endless batch iterator, step counter."""

    settings: PathSettings
    ctx: TrainContext
    loader: DataLoader
    batches: Iterator
    step: int = 0
    windows: list[dict[str, float]] = field(default_factory=list)
    warmup_s: float = 0.0
    loss_sum: torch.Tensor | None = None


def run_steps(run: PathRun, steps: int, clock: PhaseClock | None = None) -> float:
    """``steps`` training steps; returns the host seconds spent blocked on the DataLoader."""
    waited = 0.0
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(run.batches)
        waited += time.perf_counter() - before
        marks = [clock.mark()] if clock else []
        crops = make_crops(run.ctx, batch, run.settings, run.ctx.config.seed * 1_000_003 + run.step)
        if clock:
            marks.append(clock.mark())
        loss, _, _ = train_step(run.ctx, crops, 1, run.step)
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
    window = {"wall_s": wall, "data_wait_s": waited, "augment_s": float(spans[0]), "step_s": float(spans[1]),
              "images": iters * run.ctx.config.batch_size_per_gpu, "peak_memory_gb": peak_memory_gb(device)}
    run.windows.append(window)
    return window


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux reports KiB


# -- results -------------------------------------------------------------------------------
def peak_tflops(args: argparse.Namespace, device: torch.device) -> tuple[float | None, float | None]:
    """(spec peak, practically reachable peak) in TFLOP/s for MFU; None when unknown (e.g. CPU)."""
    if args.peak_tflops:
        return args.peak_tflops, args.peak_tflops
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for key, spec in PEAK_TFLOPS_SPEC.items():
        if key in name:
            return spec, PEAK_TFLOPS_MEASURED[key]
    return None, None


def summarize(run: PathRun, flops_per_image: float, peaks: tuple[float | None, float | None]) -> dict[str, Any]:
    """img/s, TFLOP/s, MFU, peak memory and the time breakdown over all timed windows of a path."""
    w = {k: sum(win[k] for win in run.windows) for k in ("wall_s", "data_wait_s", "augment_s", "step_s", "images")}
    rate = w["images"] / w["wall_s"]
    achieved = flops_per_image * rate
    spec, practical = peaks
    cuda = run.ctx.device.type == "cuda"
    loss = float(run.loss_sum / max(run.step, 1)) if run.loss_sum is not None else float("nan")
    return {
        "path": run.settings.name, "settings": asdict(run.settings),
        "img_per_s": rate, "img_per_s_per_round": [win["images"] / win["wall_s"] for win in run.windows],
        "step_ms": 1e3 * w["wall_s"] * run.ctx.config.batch_size_per_gpu / w["images"],
        "achieved_tflops": achieved / 1e12,
        "mfu": mfu(flops_per_image, rate, spec * 1e12) if spec else None,
        "mfu_vs_practical_peak": mfu(flops_per_image, rate, practical * 1e12) if practical else None,
        "peak_memory_gb": max(win["peak_memory_gb"] for win in run.windows),
        "peak_memory_kind": "cuda_max_allocated" if cuda else "process_max_rss",
        "data_wait_fraction": w["data_wait_s"] / w["wall_s"],
        "device_busy_fraction": (w["augment_s"] + w["step_s"]) / w["wall_s"] if cuda else None,
        "breakdown_s": {"wall": w["wall_s"], "data_wait_host": w["data_wait_s"],
                        "decode_and_augment": w["augment_s"], "forward_backward_step": w["step_s"]},
        "warmup_s": run.warmup_s, "mean_loss": loss,
    }


def print_summary(result: dict[str, Any]) -> None:
    clock = "device time" if result["peak_memory_kind"] == "cuda_max_allocated" else "host time"
    mfu_text = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    b = result["breakdown_s"]
    print(f"[{result['path']}] {result['img_per_s']:.1f} img/s ({result['step_ms']:.1f} ms/step), "
          f"{result['achieved_tflops']:.3f} TFLOP/s, MFU {mfu_text}, peak memory {result['peak_memory_gb']:.2f} GB "
          f"({result['peak_memory_kind']}), data wait {100 * result['data_wait_fraction']:.1f}%")
    print(f"[{result['path']}]   time: wall {b['wall']:.2f}s = data wait {b['data_wait_host']:.2f}s (host) | "
          f"decode+augment {b['decode_and_augment']:.2f}s | fwd+bwd+step {b['forward_backward_step']:.2f}s "
          f"({clock}); warm-up {result['warmup_s']:.1f}s; rounds "
          + ", ".join(f"{r:.1f}" for r in result["img_per_s_per_round"]) + " img/s")
    if result["device_busy_fraction"] is not None:
        print(f"[{result['path']}]   GPU busy {100 * result['device_busy_fraction']:.1f}% of the wall time")


# -- main ----------------------------------------------------------------------------------
def start_path(args: argparse.Namespace, device: torch.device, baseline: bool, total_steps: int) -> PathRun:
    """Build one path (data, models) and run its untimed warm-up steps."""
    settings = path_settings(args, device, baseline)
    cfg = bench_config(args, total_steps)
    workers = args.num_workers if args.num_workers is not None else max(1, len(os.sched_getaffinity(0)) - 1)
    dataset, collate = build_dataset(args, settings, cfg)
    loader = build_loader(dataset, collate, cfg, total_steps + 2, workers, device, args.prefetch_factor)
    ctx = build_context(cfg, settings, device, total_steps + 1, args.compile_mode)
    run = PathRun(settings, ctx, loader, iter(loader))
    start = time.perf_counter()
    run_steps(run, args.warmup)
    synchronize(device)
    run.warmup_s = time.perf_counter() - start
    logger.info("%s path ready (%s); warm-up %.1fs", settings.name, settings, run.warmup_s)
    return run


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested path(s), interleaving timed windows round by round; return the results."""
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
    flops = dino_step_flops_per_image(args.arch, args.patch_size, args.global_crops_size, args.local_crops_size,
                                      args.local_crops_number, out_dim=args.out_dim)
    peaks = peak_tflops(args, device)
    results = [summarize(run, flops, peaks) for run in runs]
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "config": {k: v for k, v in vars(args).items() if k != "json"}, "flops_per_image": flops,
            "peak_tflops_spec": peaks[0], "peak_tflops_practical": peaks[1],
            "compiled_graphs": dynamo_graph_count() - graphs_before, "results": results}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def random_crops(cfg: TrainConfig, device: torch.device, seed: int) -> list[torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(seed)
    sizes = [cfg.global_crops_size] * 2 + [cfg.local_crops_size] * cfg.local_crops_number
    return [torch.randn(cfg.batch_size_per_gpu, 3, s, s, device=device, generator=g) for s in sizes]


def check_equivalence(args: argparse.Namespace) -> dict[str, Any]:
    """Eager vs compiled default path from the same weights on the same crops: losses and weight gaps."""
    device = pick_device(args.device)
    settings = path_settings(args, device, baseline=False)
    cfg = bench_config(args, args.iters, drop_path_rate=0.0)  # drop path draws differ between eager and compiled
    contexts = [build_context(cfg, PathSettings(**{**asdict(settings), "compile": compiled}), device, args.iters,
                              args.compile_mode, args.compile_backend) for compiled in (False, True)]
    losses: list[list[float]] = [[], []]
    for it in range(args.iters):
        crops = random_crops(cfg, device, args.seed + it)
        for ctx, record in zip(contexts, losses, strict=True):
            record.append(float(train_step(ctx, crops, 1, it)[0]))
    eager, compiled = (dict(ctx.student_module.named_parameters()) for ctx in contexts)
    weight_gap = max(float((eager[k] - compiled[k]).detach().float().abs().max()) for k in eager)
    loss_gap = max(abs(a - b) for a, b in zip(*losses, strict=True))
    tolerance = 1e-4 if settings.precision == "fp32" else 2e-2  # relative to the loss
    ok = loss_gap <= tolerance * max(1.0, max(abs(v) for v in losses[0]))
    print(f"equivalence ({settings.precision}, {args.compile_backend}): losses eager {losses[0]} compiled {losses[1]}"
          f"; max |loss gap| {loss_gap:.2e}, max |weight gap| {weight_gap:.2e} -> {'OK' if ok else 'MISMATCH'}")
    return {"device": device_name(device), "precision": settings.precision, "losses_eager": losses[0],
            "losses_compiled": losses[1], "max_loss_gap": loss_gap, "max_weight_gap": weight_gap, "ok": ok}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.check_equivalence:
        report = check_equivalence(args)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2))
        return report
    report = benchmark(args)
    print(f"device: {report['device']}, torch {report['torch']}, {report['flops_per_image'] / 1e9:.1f} GFLOP/img, "
          f"graphs compiled: {report['compiled_graphs']}")
    for result in report["results"]:
        print_summary(result)
    if len(report["results"]) == 2:
        fast, base = report["results"]
        print(f"speed-up default/baseline: {fast['img_per_s'] / base['img_per_s']:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
