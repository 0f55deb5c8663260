"""One DINO training epoch: schedules, mixed precision, loss, clipping, EMA, metrics.

The step never reads a value back to the host; loss, health metrics and the non-finite flag
stay on the device and are read every ``log_every`` steps (and at the end of the epoch).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from trainer.data.dataset import Batch
from trainer.model.device import autocast_context
from trainer.train.distributed import all_reduce_sum, is_main_process
from trainer.train.ema import ema_update
from trainer.train.flags import TrainConfig
from trainer.train.health import collapse_warning, dino_health
from trainer.train.loss import N_TEACHER_VIEWS, DINOLoss
from trainer.train.optim import cancel_gradients_last_layer, clip_gradients
from trainer.train.skip_step import grads_finite, skip_nonfinite_step

logger = logging.getLogger(__name__)


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
    budget: str | None = None  # None (no time budget), "planned" or "fitted" (see epoch_label)


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
            except Exception as exc:  # noqa: BLE001 - a broken TensorBoard must not stop training
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


def _set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        if i == 0:  # only the first group is regularised
            group["weight_decay"] = wd


def batch_crops(
    ctx: TrainContext, batch: Batch, step_seed: int
) -> tuple[list[torch.Tensor], int, int]:
    """(crops on the device, images in the batch, files that failed to decode here).

    Without ``ctx.gpu_multicrop`` the batch holds the crops already (CPU multi-crop). With
    it, the batch holds encoded files (decoded here, in batches) or images that the loader
    workers decoded (uint8 tensors, ``None`` for a failure), and the crops are made here.
    """
    if ctx.gpu_multicrop is None:
        return [crop.to(ctx.device, non_blocking=True) for crop in batch.images], len(batch), 0
    from trainer.data.jpeg_batch import decode_jpegs, drop_undecoded

    if batch.images and not isinstance(batch.images[0], (bytes, bytearray)):
        decoded = [
            None if image is None else image.to(ctx.device, non_blocking=True)
            for image in batch.images
        ]
    else:
        decoded = decode_jpegs(batch.images, ctx.device)
    images, _, dropped = drop_undecoded(decoded, batch.labels)
    if not images:
        return [], 0, dropped
    generator = torch.Generator(device=ctx.device).manual_seed(step_seed)
    return ctx.gpu_multicrop(images, generator=generator), len(images), dropped


def _backward_and_step(ctx: TrainContext, loss: torch.Tensor, epoch: int) -> torch.Tensor:
    """Backward, clipping and the optimizer step; returns whether the step was taken.

    A NaN or infinite loss, or gradient (which DDP's all-reduce shares between ranks, so
    every rank decides alike), skips the step on the device, with no host sync. With a
    loss scaler, ``GradScaler.step`` skips it itself on the same gradients.
    """
    cfg = ctx.config
    opt = ctx.optimizer
    opt.zero_grad(set_to_none=True)
    scaled = loss if ctx.scaler is None else ctx.scaler.scale(loss)
    scaled.backward()
    norms = None
    if cfg.clip_grad > 0:
        if ctx.scaler is not None:
            ctx.scaler.unscale_(opt)
        norms = clip_gradients(ctx.student_module, cfg.clip_grad)
    finite = torch.isfinite(loss.detach()) & grads_finite(ctx.student_module, norms)
    cancel_gradients_last_layer(epoch, ctx.student_module, cfg.freeze_last_layer)
    if ctx.scaler is not None:
        ctx.scaler.step(opt)
        ctx.scaler.update()
    else:
        skip_nonfinite_step(opt, finite)
    return finite


def train_step(
    ctx: TrainContext, crops: list[torch.Tensor], epoch: int, it: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimisation step at global iteration ``it``.

    Returns the detached (loss, student output, teacher output). A NaN or infinite loss
    changes neither the student nor the teacher; the caller sees it in the returned loss.
    """
    _set_hyperparameters(ctx.optimizer, float(ctx.schedules.lr[it]), float(ctx.schedules.wd[it]))
    with autocast_context(ctx.device, ctx.precision):
        with torch.no_grad():
            teacher_out = ctx.teacher(crops[:N_TEACHER_VIEWS])
        student_out = ctx.student(crops)
        loss = ctx.dino_loss(student_out, teacher_out, epoch)
    taken = _backward_and_step(ctx, loss, epoch)
    momentum = float(ctx.schedules.momentum[it])
    ema_update(ctx.teacher_module, ctx.student_module, momentum, finite=taken)
    return loss.detach(), student_out.detach(), teacher_out.detach()


@dataclass
class _EpochTally:
    """Device-side sums plus host-side records, read back only at log steps."""

    loss_sum: torch.Tensor
    nonfinite: torch.Tensor  # set by a NaN/inf loss; read at the next log step
    steps: int = 0
    images: int = 0
    skipped: int = 0
    health: dict[str, list[float]] = field(default_factory=dict)
    warned: bool = False
    window_start_s: float = field(default_factory=time.perf_counter)
    window_images: int = 0

    @classmethod
    def on(cls, device: torch.device) -> _EpochTally:
        zeros = torch.zeros((), device=device)
        return cls(zeros, torch.zeros((), dtype=torch.bool, device=device))

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += loss
        self.nonfinite |= ~torch.isfinite(loss)
        self.steps += 1
        self.images += images

    def rate(self) -> float:
        """Images per second since the last log step; starts the next window."""
        now = time.perf_counter()
        rate = (self.images - self.window_images) / max(now - self.window_start_s, 1e-9)
        self.window_start_s = now
        self.window_images = self.images
        return rate


def _raise_non_finite(epoch: int, step: int) -> None:
    raise NonFiniteLossError(
        f"Loss is not finite, stopping training: the loss became NaN or infinite in epoch {epoch} "
        f"(by step {step}). Non-finite steps changed neither the student nor the teacher, "
        "and the last good checkpoint (output_dir/checkpoint.pth, from the end of the "
        "previous epoch) was not overwritten. Try a lower --lr, a smaller --clip_grad, "
        "--precision fp32 or bf16, or a higher --teacher_temp."
    )


def _read_back(
    ctx: TrainContext,
    tally: _EpochTally,
    loss: torch.Tensor,
    outputs: tuple[torch.Tensor, ...],
    epoch: int,
    step: int,
) -> dict[str, float]:
    """The step's loss and health values on the host (one sync); stops on a non-finite flag.

    ``outputs`` is (student output, teacher output, the centre the loss used at this step).
    """
    loss_fn = ctx.dino_loss
    health = dino_health(
        *outputs, loss_fn.teacher_temp_at(epoch), loss_fn.student_temp, loss_fn.ncrops
    )
    nonfinite = all_reduce_sum(tally.nonfinite.float().reshape(1))[0]  # all ranks stop together
    stacked = torch.stack([loss.float(), nonfinite, *[h.float() for h in health.values()]])
    values = dict(zip(["loss", "nonfinite", *health], stacked.tolist(), strict=True))
    if values.pop("nonfinite") > 0:
        _raise_non_finite(epoch, step)
    for key in health:
        tally.health.setdefault(key, []).append(values[key])
    return values


def _warn_collapse(
    ctx: TrainContext, tally: _EpochTally, values: dict[str, float], epoch: int, step: int
) -> None:
    """Warn (once an epoch, on the main process) when the read-back values show a collapse."""
    warning = collapse_warning(values, ctx.config.out_dim)
    if warning and not tally.warned and is_main_process():
        logger.warning("epoch %d step %d: %s", epoch, step, warning)
        tally.warned = True


def _record(
    ctx: TrainContext, values: dict[str, float], epoch: int, step: int, it: int, rate: float
) -> dict[str, float]:
    schedules = ctx.schedules
    record = {
        "epoch": epoch,
        "iter": step,
        **values,
        "lr": float(schedules.lr[it]),
        "wd": float(schedules.wd[it]),
        "momentum": float(schedules.momentum[it]),
        "teacher_temp": ctx.dino_loss.teacher_temp_at(epoch),
        "img_per_s": rate,
    }
    if ctx.metrics is not None:
        ctx.metrics.write(it, record)
    return record


PROGRESS_MININTERVAL_S = 1.0


def epoch_label(epoch: int, epochs: int, budget: str | None = None) -> str:
    """The progress bar's title: the epoch as ``log.txt`` and ``probes/`` number it (from 0),
    its place in the run, and whether a time budget may still change the run's length."""
    place = f"{epoch + 1} of {epochs}"
    if budget == "planned":
        place = f"{epoch + 1} of at most {epochs}, time budget"
    elif budget == "fitted":
        place += ", fitted to the time budget"
    return f"epoch {epoch} ({place})"


def _progress(total: int, desc: str, file: Any = None):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        disable=not is_main_process(),
        dynamic_ncols=True,
        mininterval=PROGRESS_MININTERVAL_S,
        file=file,
    )


def _advance(bar: Any, step: int, total: int) -> None:
    """One step on the bar; the last one is drawn once, by ``close`` (not also by ``update``)."""
    if step + 1 < total:
        bar.update(1)
    else:
        bar.n = total


def _show(bar: Any, rec: dict[str, float]) -> None:
    bar.set_postfix(
        refresh=False,
        loss=f"{rec['loss']:.4f}",
        lr=f"{rec['lr']:.2e}",
        wd=f"{rec['wd']:.3f}",
        mom=f"{rec['momentum']:.4f}",
        t_temp=f"{rec['teacher_temp']:.3f}",
        img_s=f"{rec['img_per_s']:.1f}",
    )


def train_one_epoch(
    ctx: TrainContext, loader: torch.utils.data.DataLoader, epoch: int
) -> dict[str, float]:
    """Train for one epoch; returns the epoch's averages (loss, lr, wd, ...) over all ranks."""
    ctx.student.train()
    ctx.teacher.train()  # as the authors: only BatchNorm in the head (if any) cares
    niter = len(loader)
    tally = _EpochTally.on(ctx.device)
    epochs = len(ctx.schedules.lr) // max(niter, 1)
    with logging_redirect_tqdm(), _progress(niter, epoch_label(epoch, epochs, ctx.budget)) as bar:
        for step, batch in enumerate(loader):
            _train_batch(ctx, tally, batch, epoch, step, niter, bar)
            _advance(bar, step, niter)
    return _epoch_summary(ctx, tally, epoch, niter)


def _train_batch(
    ctx: TrainContext, tally: _EpochTally, batch: Batch, epoch: int, step: int, niter: int, bar
) -> None:
    """One step of :func:`train_one_epoch`, with its read-back and bar text at log steps."""
    it = epoch * niter + step
    crops, n_images, dropped = batch_crops(ctx, batch, ctx.config.seed * 1_000_003 + it)
    tally.skipped += batch.skipped + dropped
    if n_images == 0:
        return  # every file in the batch was unreadable
    log_now = (step + 1) % ctx.config.log_every == 0 or step + 1 == niter
    center_used = ctx.dino_loss.center.clone() if log_now else None  # updated in place
    loss, student_out, teacher_out = train_step(ctx, crops, epoch, it)
    tally.add(loss, n_images)
    if log_now:
        outputs = (student_out, teacher_out, center_used)
        values = _read_back(ctx, tally, loss, outputs, epoch, step)
        _warn_collapse(ctx, tally, values, epoch, step)
        _show(bar, _record(ctx, values, epoch, step, it, tally.rate()))


def _epoch_summary(
    ctx: TrainContext, tally: _EpochTally, epoch: int, niter: int
) -> dict[str, float]:
    counts = torch.tensor([float(tally.steps), float(tally.skipped)], device=ctx.device)
    totals = torch.cat(
        [tally.loss_sum.float().reshape(1), counts, tally.nonfinite.float().reshape(1)]
    )
    loss_sum, steps, skipped, nonfinite = all_reduce_sum(totals).tolist()
    if nonfinite > 0:
        _raise_non_finite(epoch, niter - 1)
    schedules = ctx.schedules
    window = slice(epoch * niter, (epoch + 1) * niter)
    summary = {
        "loss": loss_sum / max(steps, 1.0),
        "lr": float(np.mean(schedules.lr[window])),
        "wd": float(np.mean(schedules.wd[window])),
        "momentum": float(schedules.momentum[min(window.stop, len(schedules.momentum)) - 1]),
        "teacher_temp": ctx.dino_loss.teacher_temp_at(epoch),
        "corrupt_files": int(skipped),
    }
    for key, values in tally.health.items():
        summary[key] = float(np.mean(values))
    return summary
