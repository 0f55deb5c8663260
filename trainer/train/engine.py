"""One DINO training epoch: schedules, mixed precision, loss, clipping, EMA, metrics.

The step never reads a value back to the host; loss, health metrics and the non-finite flag
stay on the device and are read every ``log_every`` steps (and at the end of the epoch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.data.dataset import Batch
from trainer.train.config import TrainConfig
from trainer.train.distributed import all_reduce_sum, is_main_process
from trainer.train.ema import ema_update
from trainer.train.health import collapse_warning, dino_health
from trainer.train.loss import DINOLoss
from trainer.train.optim import cancel_gradients_last_layer, clip_gradients

logger = logging.getLogger(__name__)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before any checkpoint was overwritten."""


@dataclass
class Schedules:
    """Per-iteration values over the whole run (index = epoch * iters_per_epoch + step)."""

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray


@dataclass
class TrainContext:
    """Everything a training step needs; ``student``/``teacher`` may be DDP- or compile-wrapped."""

    config: TrainConfig
    student: nn.Module
    teacher: nn.Module
    student_module: nn.Module  # unwrapped MultiCropWrapper (checkpoint keys, EMA, clipping)
    teacher_module: nn.Module
    dino_loss: DINOLoss
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    device: torch.device
    precision: str
    scaler: torch.amp.GradScaler | None = None
    metrics: MetricsWriter | None = None
    gpu_multicrop: nn.Module | None = None  # crops made on the device from decoded uint8 images


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object per logged step) plus TensorBoard when it is installed."""

    def __init__(self, output_dir: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tensorboard = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(Path(output_dir) / "tensorboard"))
            except Exception as exc:  # noqa: BLE001 - absent or broken TensorBoard must not stop training
                logger.info("TensorBoard logging off: %s", exc)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in ``precision`` (bf16|fp16), or nothing for fp32."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(AUTOCAST_DTYPES)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def _set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if i == 0:  # only the first group is regularised
            group["weight_decay"] = wd


def _to_device(ctx: TrainContext, batch: Batch, step_seed: int) -> tuple[list[torch.Tensor], int, int]:
    """(crops on the device, images in the batch, files that failed to decode here)."""
    if ctx.gpu_multicrop is None:
        return [crop.to(ctx.device, non_blocking=True) for crop in batch.images], len(batch), 0
    from trainer.data.jpeg_batch import decode_jpegs, drop_undecoded

    decoded = decode_jpegs(batch.images, ctx.device)
    images, _, dropped = drop_undecoded(decoded, batch.labels)
    if not images:
        return [], 0, dropped
    generator = torch.Generator(device=ctx.device).manual_seed(step_seed)
    return ctx.gpu_multicrop(images, generator=generator), len(images), dropped


def _backward_and_step(ctx: TrainContext, loss: torch.Tensor, epoch: int) -> None:
    cfg, opt = ctx.config, ctx.optimizer
    opt.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        if cfg.clip_grad > 0:
            ctx.scaler.unscale_(opt)
            clip_gradients(ctx.student_module, cfg.clip_grad)
        cancel_gradients_last_layer(epoch, ctx.student_module, cfg.freeze_last_layer)
        ctx.scaler.step(opt)
        ctx.scaler.update()
        return
    loss.backward()
    if cfg.clip_grad > 0:
        clip_gradients(ctx.student_module, cfg.clip_grad)
    cancel_gradients_last_layer(epoch, ctx.student_module, cfg.freeze_last_layer)
    opt.step()


def train_step(ctx: TrainContext, crops: list[torch.Tensor], epoch: int,
               it: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step at global iteration ``it``; returns detached (loss, student, teacher) outputs."""
    _set_hyperparameters(ctx.optimizer, float(ctx.schedules.lr[it]), float(ctx.schedules.wd[it]))
    with autocast_context(ctx.device, ctx.precision):
        with torch.no_grad():
            teacher_out = ctx.teacher(crops[:2])
        student_out = ctx.student(crops)
        loss = ctx.dino_loss(student_out, teacher_out, epoch)
    _backward_and_step(ctx, loss, epoch)
    ema_update(ctx.teacher_module, ctx.student_module, float(ctx.schedules.momentum[it]))
    return loss.detach(), student_out.detach(), teacher_out.detach()


@dataclass
class _EpochTally:
    """Device-side sums plus host-side records, read back only at log steps."""

    loss_sum: torch.Tensor
    nonfinite: torch.Tensor
    steps: int = 0
    images: int = 0
    skipped: int = 0
    health: dict[str, list[float]] = field(default_factory=dict)
    warned: bool = False


def _health_values(ctx: TrainContext, student_out: torch.Tensor, teacher_out: torch.Tensor, center: torch.Tensor,
                   epoch: int) -> dict[str, torch.Tensor]:
    return dino_health(student_out, teacher_out, center, ctx.dino_loss.teacher_temp_at(epoch),
                       ctx.dino_loss.student_temp, ctx.dino_loss.ncrops)


def _raise_non_finite(epoch: int, step: int) -> None:
    raise NonFiniteLossError(
        f"the loss became NaN or infinite in epoch {epoch} (by step {step}); training stopped. The last "
        "good checkpoint (output_dir/checkpoint.pth, from the end of the previous epoch) was not overwritten. "
        "Try a lower --lr, a smaller --clip_grad, --precision fp32 or bf16, or a higher --teacher_temp.")


def _log_step(ctx: TrainContext, tally: _EpochTally, loss: torch.Tensor, outputs: tuple[torch.Tensor, ...],
              epoch: int, step: int, it: int, rate: float) -> dict[str, float]:
    """Read the step's values back to the host (one sync), check them, write metrics.jsonl.

    ``outputs`` is (student output, teacher output, the centre the loss used at this step).
    """
    health = _health_values(ctx, *outputs, epoch)
    nonfinite = all_reduce_sum(tally.nonfinite.float().reshape(1))[0]  # every rank stops together
    names = ["loss", "nonfinite", *health]
    values = dict(zip(names, torch.stack([loss.float(), nonfinite,
                                          *[h.float() for h in health.values()]]).tolist(), strict=True))
    if values.pop("nonfinite") > 0:
        _raise_non_finite(epoch, step)
    for key in health:
        tally.health.setdefault(key, []).append(values[key])
    record = {"epoch": epoch, "iter": step, **values, "lr": float(ctx.schedules.lr[it]),
              "wd": float(ctx.schedules.wd[it]), "momentum": float(ctx.schedules.momentum[it]),
              "teacher_temp": ctx.dino_loss.teacher_temp_at(epoch), "img_per_s": rate}
    warning = collapse_warning(values, ctx.config.out_dim)
    if warning and not tally.warned and is_main_process():
        logger.warning("epoch %d step %d: %s", epoch, step, warning)
        tally.warned = True
    if ctx.metrics is not None:
        ctx.metrics.write(it, record)
    return record


def _progress(total: int, epoch: int, epochs: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch}/{epochs}", disable=not is_main_process(), dynamic_ncols=True,
                mininterval=1.0)


def train_one_epoch(ctx: TrainContext, loader: torch.utils.data.DataLoader, epoch: int) -> dict[str, float]:
    """Train for one epoch; returns the epoch's averages (loss, lr, wd, ...) summed over ranks."""
    cfg = ctx.config
    ctx.student.train()
    ctx.teacher.train()  # as the authors: only BatchNorm in the head (if any) cares
    niter = len(loader)
    tally = _EpochTally(torch.zeros((), device=ctx.device), torch.zeros((), dtype=torch.bool, device=ctx.device))
    bar = _progress(niter, epoch, cfg.epochs)
    last_time, last_images = time.perf_counter(), 0
    for step, batch in enumerate(loader):
        it = epoch * niter + step
        crops, n_images, dropped = _to_device(ctx, batch, cfg.seed * 1_000_003 + it)
        tally.skipped += batch.skipped + dropped
        if n_images == 0:
            bar.update(1)
            continue  # every file in the batch was unreadable
        log_now = (step + 1) % cfg.log_every == 0 or step + 1 == niter
        center_used = ctx.dino_loss.center.clone() if log_now else None  # the loss updates it in place
        loss, student_out, teacher_out = train_step(ctx, crops, epoch, it)
        tally.loss_sum += loss
        tally.nonfinite |= ~torch.isfinite(loss)
        tally.steps += 1
        tally.images += n_images
        bar.update(1)
        if log_now:
            now = time.perf_counter()
            rate = (tally.images - last_images) / max(now - last_time, 1e-9)
            rec = _log_step(ctx, tally, loss, (student_out, teacher_out, center_used), epoch, step, it, rate)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", wd=f"{rec['wd']:.3f}",
                            mom=f"{rec['momentum']:.4f}", t_temp=f"{rec['teacher_temp']:.3f}",
                            img_s=f"{rate:.1f}")
            last_time, last_images = time.perf_counter(), tally.images
    bar.close()
    return _epoch_summary(ctx, tally, epoch, niter)


def _epoch_summary(ctx: TrainContext, tally: _EpochTally, epoch: int, niter: int) -> dict[str, float]:
    totals = torch.stack([tally.loss_sum.float(), torch.tensor(float(tally.steps), device=ctx.device),
                          torch.tensor(float(tally.skipped), device=ctx.device), tally.nonfinite.float()])
    loss_sum, steps, skipped, nonfinite = all_reduce_sum(totals).tolist()
    if nonfinite > 0:
        _raise_non_finite(epoch, niter - 1)
    window = slice(epoch * niter, (epoch + 1) * niter)
    summary = {
        "loss": loss_sum / max(steps, 1.0),
        "lr": float(np.mean(ctx.schedules.lr[window])),
        "wd": float(np.mean(ctx.schedules.wd[window])),
        "momentum": float(ctx.schedules.momentum[min(window.stop, len(ctx.schedules.momentum)) - 1]),
        "teacher_temp": ctx.dino_loss.teacher_temp_at(epoch),
        "corrupt_files": int(skipped),
    }
    for key, values in tally.health.items():
        summary[key] = float(np.mean(values))
    return summary
