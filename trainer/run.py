"""DINO pretraining entry point: ``python trainer/run.py ...`` or ``torchrun ... trainer/run.py ...``.

Accepts the DINO authors' ``main_dino.py`` flags (see ``--help`` and docs/TRAINING.md).
Every epoch, rank 0 writes ``checkpoint.pth`` (the official layout), ``teacher_backbone.safetensors``
and one JSON line in ``log.txt``; a restart with the same ``--output_dir`` resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package from the repository root
    _ROOT = str(Path(__file__).resolve().parents[1])
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.path.insert(0, _ROOT)

import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from trainer.data.augment import DataAugmentationDINO  # noqa: E402
from trainer.data.dataset import (  # noqa: E402
    Batch,
    EpochIndexSampler,
    SafeImageDataset,
    collate_skip_none,
    make_loader,
    make_sampler,
    scan_image_folder,
)
from trainer.model.checkpoint import atomic_torch_save, export_backbone_safetensors, load_checkpoint  # noqa: E402
from trainer.model.device import bf16_supported, resolve_precision  # noqa: E402
from trainer.model.head import DINOHead, MultiCropWrapper  # noqa: E402
from trainer.model.vit import build_vit  # noqa: E402
from trainer.train import distributed as dist_utils  # noqa: E402
from trainer.train.compile import compile_models  # noqa: E402
from trainer.train.config import TrainConfig, config_to_dict, parse_config  # noqa: E402
from trainer.train.engine import MetricsWriter, Schedules, TrainContext, train_one_epoch  # noqa: E402
from trainer.train.loss import DINOLoss  # noqa: E402
from trainer.train.optim import build_optimizer, get_params_groups  # noqa: E402
from trainer.train.schedules import cosine_scheduler, scaled_lr  # noqa: E402
from trainer.train.time_budget import TimeBudget, teacher_temps_for  # noqa: E402

logger = logging.getLogger("trainer.run")
CHECKPOINT_NAME = "checkpoint.pth"
BACKBONE_EXPORT_NAME = "teacher_backbone.safetensors"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_student_teacher(cfg: TrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with stochastic depth) and a teacher with the same weights, no drop path, no grads."""
    student_backbone = build_vit(cfg.arch, cfg.patch_size, drop_path_rate=cfg.drop_path_rate)
    teacher_backbone = build_vit(cfg.arch, cfg.patch_size, drop_path_rate=0.0)
    dim = student_backbone.embed_dim
    student = MultiCropWrapper(student_backbone, DINOHead(dim, cfg.out_dim, cfg.use_bn_in_head, cfg.norm_last_layer))
    teacher = MultiCropWrapper(teacher_backbone, DINOHead(dim, cfg.out_dim, cfg.use_bn_in_head))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def _use_gpu_augment(cfg: TrainConfig, device: torch.device) -> bool:
    wanted = device.type == "cuda" if cfg.gpu_augment is None else cfg.gpu_augment
    return bool(wanted)


def collate_encoded(items: list[tuple[bytes, int]]) -> Batch:
    """Raw file bytes for the device-side decoder; unreadable files (b"") are dropped and counted."""
    good = [(blob, index) for blob, index in items if blob]
    return Batch([blob for blob, _ in good], torch.tensor([i for _, i in good], dtype=torch.long),
                 len(items) - len(good))


def build_train_loader(cfg: TrainConfig, env: dist_utils.DistEnv, device: torch.device):
    """(loader, sampler, gpu_multicrop or None) for the training images."""
    samples, classes = scan_image_folder(cfg.data_path)
    logger.info("data: %d images in %d class folder(s) from %s", len(samples), len(classes), cfg.data_path)
    crop_args = (cfg.global_crops_scale, cfg.local_crops_scale, cfg.local_crops_number,
                 cfg.global_crops_size, cfg.local_crops_size)
    if len(samples) < cfg.batch_size_per_gpu * env.world_size:
        raise ValueError(f"{len(samples)} images is fewer than one batch ({cfg.batch_size_per_gpu} x "
                         f"{env.world_size} processes); lower --batch_size_per_gpu")
    gpu_multicrop = None
    if _use_gpu_augment(cfg, device):  # workers read bytes; decoding and crops happen on the device
        from trainer.data.gpu_augment import GPUMultiCrop
        from trainer.data.jpeg_batch import EncodedImageFolder

        dataset = EncodedImageFolder(samples)
        collate, gpu_multicrop = collate_encoded, GPUMultiCrop(*crop_args).to(device)
        sampler = make_sampler(dataset, True, cfg.seed, env.rank, env.world_size)
    else:
        dataset = SafeImageDataset(samples, DataAugmentationDINO(*crop_args), seed=cfg.seed)
        collate = collate_skip_none
        sampler = EpochIndexSampler(make_sampler(dataset, True, cfg.seed, env.rank, env.world_size))
    loader = make_loader(dataset, cfg.batch_size_per_gpu, sampler, cfg.num_workers, device.type == "cuda",
                         drop_last=True, collate_fn=collate)
    return loader, sampler, gpu_multicrop


def build_schedules(cfg: TrainConfig, niter: int, world_size: int) -> Schedules:
    base_lr = scaled_lr(cfg.lr, cfg.batch_size_per_gpu, world_size)
    return Schedules(
        lr=cosine_scheduler(base_lr, cfg.min_lr, cfg.epochs, niter, warmup_epochs=cfg.warmup_epochs),
        wd=cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, niter),
        momentum=cosine_scheduler(cfg.momentum_teacher, 1.0, cfg.epochs, niter),
    )


def checkpoint_state(ctx: TrainContext, next_epoch: int) -> dict[str, Any]:
    """The authors' layout, loadable with ``weights_only=True`` (no ``module.`` prefixes)."""
    return {
        "student": ctx.student_module.state_dict(),
        "teacher": ctx.teacher_module.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "epoch": next_epoch,
        "args": config_to_dict(ctx.config),
        "dino_loss": ctx.dino_loss.state_dict(),
        "fp16_scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
    }


def resume_if_possible(ctx: TrainContext, output_dir: Path) -> int:
    """Load ``output_dir/checkpoint.pth`` into every part of ``ctx``; return the epoch to start at."""
    path = output_dir / CHECKPOINT_NAME
    if not path.is_file():
        return 0
    ckpt = load_checkpoint(path)
    old = ckpt.get("args") or {}
    for key in ("arch", "patch_size", "out_dim", "use_bn_in_head"):
        if key in old and old[key] != getattr(ctx.config, key):
            raise ValueError(f"{path} was trained with {key}={old[key]!r} but this run has "
                             f"{key}={getattr(ctx.config, key)!r}; use another --output_dir or the same {key}")
    ctx.student_module.load_state_dict(ckpt["student"])
    ctx.teacher_module.load_state_dict(ckpt["teacher"])
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    ctx.dino_loss.load_state_dict(ckpt["dino_loss"])
    if ctx.scaler is not None and ckpt.get("fp16_scaler"):
        ctx.scaler.load_state_dict(ckpt["fp16_scaler"])
    logger.info("resumed from %s at epoch %d", path, ckpt["epoch"])
    return int(ckpt["epoch"])


def _wrap_for_training(cfg: TrainConfig, student: nn.Module, teacher: nn.Module, env: dist_utils.DistEnv,
                       device: torch.device) -> tuple[nn.Module, nn.Module]:
    """SyncBN and DDP for several processes; ``--compile`` compiles in place (state-dict keys unchanged)."""
    if env.distributed and cfg.use_bn_in_head:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    if cfg.compile:
        compile_models(student, teacher)
    if env.distributed:
        ids = [device.index] if device.type == "cuda" else None
        student = nn.parallel.DistributedDataParallel(student, device_ids=ids)
    return student, teacher


@dataclass
class RunParts:
    ctx: TrainContext
    loader: torch.utils.data.DataLoader
    sampler: EpochIndexSampler | torch.utils.data.DistributedSampler
    env: dist_utils.DistEnv


def build_run(cfg: TrainConfig, env: dist_utils.DistEnv, device: torch.device) -> RunParts:
    """Models, loss, optimizer, scaler, data and schedules, all on ``device``."""
    seed_everything(cfg.seed)
    student, teacher = build_student_teacher(cfg)
    student, teacher = student.to(device), teacher.to(device)
    student_run, teacher_run = _wrap_for_training(cfg, student, teacher, env, device)
    precision = resolve_precision(cfg.precision, device.type, bf16_supported(device), cfg.use_fp16)
    loader, sampler, gpu_multicrop = build_train_loader(cfg, env, device)
    dino_loss = DINOLoss(cfg.out_dim, cfg.local_crops_number + 2, cfg.warmup_teacher_temp, cfg.teacher_temp,
                         cfg.warmup_teacher_temp_epochs, cfg.epochs).to(device)
    optimizer = build_optimizer(cfg.optimizer, get_params_groups(student), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ctx = TrainContext(cfg, student_run, teacher_run, student, teacher, dino_loss, optimizer,
                       build_schedules(cfg, len(loader), env.world_size), device, precision, scaler,
                       MetricsWriter(cfg.output_dir, dist_utils.is_main_process()), gpu_multicrop)
    logger.info("%s/%d on %s, precision %s, %d process(es), %d steps per epoch", cfg.arch, cfg.patch_size,
                device, precision, env.world_size, len(loader))
    return RunParts(ctx, loader, sampler, env)


def _epoch_extras(ctx: TrainContext, epoch: int) -> dict[str, Any]:
    """k-NN evaluation and attention probes (rank 0 only)."""
    cfg, extras = ctx.config, {}
    backbone = ctx.teacher_module.backbone
    if cfg.knn_every and (epoch + 1) % cfg.knn_every == 0:
        from trainer.eval.knn import knn_evaluate

        results = knn_evaluate(backbone, cfg.knn_train_data, cfg.knn_val_data, ctx.device, cfg.knn_k,
                               resize=cfg.knn_resize, crop=cfg.knn_crop, batch_size=cfg.batch_size_per_gpu,
                               num_workers=min(cfg.num_workers, 4))
        extras.update({f"knn_{k}": v for k, v in results.items()})
    if cfg.probe_images and (epoch % cfg.probe_every == 0 or epoch + 1 == cfg.epochs):
        from trainer.eval.probes import save_attention_probes

        out = Path(cfg.output_dir) / "probes" / f"epoch{epoch:04d}"
        save_attention_probes(backbone, cfg.probe_images, out, cfg.probe_size or cfg.global_crops_size, ctx.device)
    return extras


def save_epoch_outputs(ctx: TrainContext, epoch: int, stats: dict[str, Any]) -> dict[str, Any]:
    """checkpoint.pth, checkpointNNNN.pth, teacher_backbone.safetensors, extras and a log.txt line."""
    cfg, out = ctx.config, Path(ctx.config.output_dir)
    if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 >= cfg.epochs:
        state = checkpoint_state(ctx, epoch + 1)
        atomic_torch_save(state, out / CHECKPOINT_NAME)
        if cfg.saveckp_freq and epoch % cfg.saveckp_freq == 0:
            atomic_torch_save(state, out / f"checkpoint{epoch:04d}.pth")
        export_backbone_safetensors(ctx.teacher_module.backbone, out / BACKBONE_EXPORT_NAME, cfg.arch, epoch + 1)
    log_stats = {**{f"train_{k}": v for k, v in stats.items()}, "epoch": epoch, **_epoch_extras(ctx, epoch)}
    with open(out / "log.txt", "a") as fh:
        fh.write(json.dumps(log_stats) + "\n")
    return log_stats


def fit_to_budget(parts: RunParts, budget: TimeBudget, done: int, epoch_s: float, pending_s: float) -> None:
    """Rebuild the schedules when the budget changes the run's length (rank 0 decides for all)."""
    ctx, cfg = parts.ctx, parts.ctx.config
    total = budget.epochs_after(done, time.time(), epoch_s, pending_s)
    total = dist_utils.broadcast_int(total, ctx.device)
    if total == cfg.epochs:
        return
    logger.info("time budget (%.1f min): %d epochs in all instead of %d (last epoch took %.1f s)",
                budget.limit_s / 60, total, cfg.epochs, epoch_s)
    if total <= done:
        cfg.epochs = done  # stop after this epoch; its schedules are the ones it ran with
        if budget.warmup_epochs >= done:
            logger.warning("the time budget ends the run within its lr warm-up: the weights are not annealed")
        return
    budget.apply(cfg, total)
    ctx.schedules = build_schedules(cfg, len(parts.loader), parts.env.world_size)
    ctx.dino_loss.teacher_temps = teacher_temps_for(cfg)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training described by ``cfg``; returns the last epoch's log line."""
    env, device = dist_utils.init_distributed(cfg.device, cfg.dist_url)
    dist_utils.setup_logging()
    output_dir = Path(cfg.output_dir)
    if dist_utils.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
    parts = build_run(cfg, env, device)
    ctx = parts.ctx
    epoch = resume_if_possible(ctx, output_dir)
    last: dict[str, Any] = {}
    started = time.time()
    budget = TimeBudget.for_config(cfg, started) if cfg.time_limit_minutes > 0 else None
    save_s = 0.0
    try:
        while epoch < cfg.epochs:
            seed_everything(cfg.seed + epoch * 1009 + env.rank)
            parts.sampler.set_epoch(epoch)
            t0 = time.time()
            stats = train_one_epoch(ctx, parts.loader, epoch)
            if budget is not None:  # decided before saving, so the last epoch is known to the probes
                fit_to_budget(parts, budget, epoch + 1, time.time() - t0 + save_s, save_s)
            if stats["corrupt_files"]:
                logger.warning("epoch %d: skipped %d unreadable image file(s)", epoch, stats["corrupt_files"])
            t1 = time.time()
            if dist_utils.is_main_process():
                last = save_epoch_outputs(ctx, epoch, stats)
                logger.info("epoch %d: %s", epoch, json.dumps(last))
            dist_utils.barrier()
            save_s, epoch = time.time() - t1, epoch + 1
    finally:
        if ctx.metrics is not None:
            ctx.metrics.close()
    logger.info("training finished in %.1f min", (time.time() - started) / 60)
    dist_utils.cleanup()
    return last


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags (``--config`` YAML first) and train."""
    return train(parse_config(argv))


if __name__ == "__main__":
    main()
