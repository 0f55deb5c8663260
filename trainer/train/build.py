"""The assembly of a training run: models, loss, optimizer, schedules and the data loader.

``build_run`` puts the parts together as ``trainer/run.py`` trains with them; the smaller
builders (``build_student_teacher``, ``build_context``, ``build_schedules``, ...) let the
benchmarks assemble the same parts with other settings and time the same training step.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.data.augment import DataAugmentationDINO
from trainer.data.dataset import (
    EpochIndexSampler,
    SafeImageDataset,
    collate_skip_none,
    make_loader,
    make_sampler,
)
from trainer.data.images import scan_image_folder
from trainer.model.device import bf16_supported, resolve_precision
from trainer.model.head import DINOHead, MultiCropWrapper
from trainer.model.vit import build_vit
from trainer.train import distributed as dist_utils
from trainer.train.compile import compile_models
from trainer.train.config import StartupError
from trainer.train.engine import MetricsWriter, Schedules, TrainContext
from trainer.train.flags import TrainConfig
from trainer.train.loss import N_TEACHER_VIEWS, DINOLoss
from trainer.train.optim import build_optimizer, get_params_groups
from trainer.train.schedules import cosine_scheduler, scaled_lr
from trainer.train.self_check import EnabledPaths, run_self_checks
from trainer.train.small_data import adapt_to_folder
from trainer.train.time_budget import RunLength

logger = logging.getLogger(__name__)
Prepare = Callable[[nn.Module, nn.Module], tuple[nn.Module, nn.Module]]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_student_teacher(cfg: TrainConfig) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    """Student (with stochastic depth) and a teacher with the same weights, no drop path and no
    grads. The teacher never drops paths, whatever ``cfg.drop_path_rate`` is."""
    student_backbone = build_vit(cfg.arch, cfg.patch_size, drop_path_rate=cfg.drop_path_rate)
    teacher_backbone = build_vit(cfg.arch, cfg.patch_size, drop_path_rate=0.0)
    dim = student_backbone.embed_dim
    student_head = DINOHead(dim, cfg.out_dim, cfg.use_bn_in_head, cfg.norm_last_layer)
    student = MultiCropWrapper(student_backbone, student_head)
    teacher = MultiCropWrapper(teacher_backbone, DINOHead(dim, cfg.out_dim, cfg.use_bn_in_head))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def build_loss(cfg: TrainConfig, length: RunLength | None = None) -> DINOLoss:
    """The DINO loss over the 2 global and ``local_crops_number`` local views."""
    length = length or RunLength.of(cfg)
    return DINOLoss(
        cfg.out_dim,
        cfg.local_crops_number + N_TEACHER_VIEWS,
        cfg.warmup_teacher_temp,
        cfg.teacher_temp,
        length.warmup_teacher_temp_epochs,
        length.epochs,
    )


def build_schedules(
    cfg: TrainConfig, niter: int, world_size: int, length: RunLength | None = None
) -> Schedules:
    """Per-iteration lr, weight decay and teacher momentum over ``length`` (default: as asked)."""
    length = length or RunLength.of(cfg)
    base_lr = scaled_lr(cfg.lr, cfg.batch_size_per_gpu, world_size)
    return Schedules(
        lr=cosine_scheduler(
            base_lr, cfg.min_lr, length.epochs, niter, warmup_epochs=length.warmup_epochs
        ),
        wd=cosine_scheduler(cfg.weight_decay, cfg.weight_decay_end, length.epochs, niter),
        momentum=cosine_scheduler(cfg.momentum_teacher, 1.0, length.epochs, niter),
    )


def crop_arguments(cfg: TrainConfig) -> tuple:
    """The multi-crop settings, in the order both multi-crop classes take them."""
    return (
        cfg.global_crops_scale,
        cfg.local_crops_scale,
        cfg.local_crops_number,
        cfg.global_crops_size,
        cfg.local_crops_size,
    )


def build_gpu_multicrop(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The device-side multi-crop (crops made from decoded uint8 images)."""
    from trainer.data.gpu_augment import GPUMultiCrop

    return GPUMultiCrop(*crop_arguments(cfg)).to(device)


def use_gpu_augment(cfg: TrainConfig, device: torch.device) -> bool:
    """``--gpu_augment``, or by default: on for CUDA, off elsewhere."""
    wanted = device.type == "cuda" if cfg.gpu_augment is None else cfg.gpu_augment
    return bool(wanted)


def _check_enough_images(count: int, cfg: TrainConfig, world_size: int) -> None:
    if count < cfg.batch_size_per_gpu * world_size:
        raise StartupError(
            f"{count} images is fewer than one batch ({cfg.batch_size_per_gpu} x "
            f"{world_size} processes); lower --batch_size_per_gpu"
        )


def scan_training_images(data_path: str) -> tuple[list, list[str]]:
    """The training images, or a :class:`StartupError` naming an empty, missing or bare path."""
    if not str(data_path).strip():
        raise StartupError("--data_path is empty; give a folder of images or class folders")
    try:
        return scan_image_folder(data_path)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        raise StartupError(
            f"--data_path: {exc}; give a folder of images or an ImageFolder tree"
        ) from None


def build_train_loader(
    cfg: TrainConfig,
    env: dist_utils.DistEnv,
    device: torch.device,
    gpu_augment: bool | None = None,
    scanned: tuple[list, list[str]] | None = None,
):
    """(loader, sampler, gpu_multicrop or None) for the training images; ``gpu_augment``
    overrides :func:`use_gpu_augment` (the self-check's verdict), ``scanned`` is the result of
    :func:`scan_training_images` when it was already called."""
    samples, classes = scanned or scan_training_images(cfg.data_path)
    logger.info(
        "data: %d images in %d class folder(s) from %s", len(samples), len(classes), cfg.data_path
    )
    _check_enough_images(len(samples), cfg, env.world_size)
    gpu_multicrop = None
    if gpu_augment is None:
        gpu_augment = use_gpu_augment(cfg, device)
    if gpu_augment:  # workers read bytes; decoding and crops happen on the device
        from trainer.data.jpeg_batch import EncodedImageFolder, collate_bytes

        dataset = EncodedImageFolder(samples)
        collate = collate_bytes
        gpu_multicrop = build_gpu_multicrop(cfg, device)
        sampler = make_sampler(dataset, True, cfg.seed, env.rank, env.world_size)
    else:
        augment = DataAugmentationDINO(*crop_arguments(cfg))
        dataset = SafeImageDataset(samples, augment, seed=cfg.seed)
        collate = collate_skip_none
        sampler = EpochIndexSampler(make_sampler(dataset, True, cfg.seed, env.rank, env.world_size))
    loader = make_loader(
        dataset,
        cfg.batch_size_per_gpu,
        sampler,
        cfg.num_workers,
        device.type == "cuda",
        drop_last=True,
        collate_fn=collate,
    )
    return loader, sampler, gpu_multicrop


def wrap_for_training(
    cfg: TrainConfig,
    env: dist_utils.DistEnv,
    device: torch.device,
    compile_ok: bool | None = None,
) -> Prepare:
    """SyncBN and DDP for several processes; ``--compile`` compiles in place (keys unchanged)
    unless ``compile_ok`` is False (the self-check's verdict)."""
    compile_models_too = cfg.compile if compile_ok is None else cfg.compile and compile_ok

    def prepare(student: nn.Module, teacher: nn.Module) -> tuple[nn.Module, nn.Module]:
        if env.distributed and cfg.use_bn_in_head:
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
        if compile_models_too:
            compile_models(student, teacher)
        if env.distributed:
            ids = [device.index] if device.type == "cuda" else None
            student = nn.parallel.DistributedDataParallel(student, device_ids=ids)
        return student, teacher

    return prepare


@dataclass
class ContextOptions:
    """How :func:`build_context` differs between the trainer and the benchmarks."""

    world_size: int = 1
    prepare: Prepare | None = None  # wraps (student, teacher) for running: DDP, compile, ...
    fused_optimizer: bool = True  # fused AdamW where the device has the kernel (CUDA, CPU)
    gpu_multicrop: nn.Module | None = None
    metrics: MetricsWriter | None = None


def build_context(
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    niter: int,
    options: ContextOptions | None = None,
) -> TrainContext:
    """Models, loss, optimizer, loss scaler (fp16) and schedules on ``device``, seeded."""
    options = options or ContextOptions()
    seed_everything(cfg.seed)
    student, teacher = build_student_teacher(cfg)
    student = student.to(device)
    teacher = teacher.to(device)
    prepare = options.prepare or (lambda s, t: (s, t))
    student_run, teacher_run = prepare(student, teacher)
    optimizer = build_optimizer(
        cfg.optimizer, get_params_groups(student), fused=options.fused_optimizer
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    schedules = build_schedules(cfg, niter, options.world_size)
    return TrainContext(
        cfg,
        student_run,
        teacher_run,
        student,
        teacher,
        build_loss(cfg).to(device),
        optimizer,
        schedules,
        device,
        precision,
        scaler,
        options.metrics,
        options.gpu_multicrop,
    )


@dataclass
class RunParts:
    ctx: TrainContext
    loader: torch.utils.data.DataLoader
    sampler: EpochIndexSampler | torch.utils.data.DistributedSampler
    env: dist_utils.DistEnv


def build_run(cfg: TrainConfig, env: dist_utils.DistEnv, device: torch.device) -> RunParts:
    """Models, loss, optimizer, scaler, data and schedules, all on ``device``; ``ctx.config`` is
    ``cfg`` as :func:`~trainer.train.small_data.adapt_to_folder` leaves it for the folder."""
    precision = resolve_precision(cfg.precision, device.type, bf16_supported(device), cfg.use_fp16)
    scanned = scan_training_images(cfg.data_path)  # a bad data path stops the run here, first
    _check_enough_images(len(scanned[0]), cfg, env.world_size)
    paths: EnabledPaths = run_self_checks(cfg, device, use_gpu_augment(cfg, device))
    loader, sampler, gpu_multicrop = build_train_loader(
        cfg, env, device, paths.gpu_augment, scanned
    )
    cfg = adapt_to_folder(cfg, len(scanned[0]), len(loader))
    metrics = MetricsWriter(cfg.output_dir, dist_utils.is_main_process())
    options = ContextOptions(
        env.world_size,
        wrap_for_training(cfg, env, device, paths.compile),
        fused_optimizer=paths.fused_optimizer,
        gpu_multicrop=gpu_multicrop,
        metrics=metrics,
    )
    ctx = build_context(cfg, device, precision, len(loader), options)
    logger.info(
        "%s/%d on %s, precision %s, %d process(es), %d steps per epoch",
        cfg.arch,
        cfg.patch_size,
        device,
        precision,
        env.world_size,
        len(loader),
    )
    return RunParts(ctx, loader, sampler, env)
