"""The run loop: epochs, resume, the time budget, checkpoints, evaluation and ``log.txt``.

Every epoch, rank 0 writes ``checkpoint.pth`` (the authors' layout plus ``fitted``),
``teacher_backbone.safetensors`` and one JSON line in ``log.txt``; a restart with the same
``--output_dir`` resumes (from ``--resume_from`` when given; from the newest readable
``checkpointNNNN.pth``, named in the log, when ``checkpoint.pth`` is unreadable). Before any
model is built, the output folder is proven writable. The configuration is never changed:
when ``--time_limit_minutes`` shortens the run, the fitted length travels beside it
(:class:`RunLength`), the checkpoint's ``args`` keep what was asked and its ``fitted`` field
records what the budget fitted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trainer.model.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    export_backbone_safetensors,
    load_checkpoint,
)
from trainer.train import distributed as dist_utils
from trainer.train.build import RunParts, build_run, build_schedules, seed_everything
from trainer.train.config import StartupError, config_to_dict
from trainer.train.engine import TrainContext, train_one_epoch
from trainer.train.flags import TrainConfig
from trainer.train.time_budget import RunLength, TimeBudget

logger = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pth"
BACKBONE_EXPORT_NAME = "teacher_backbone.safetensors"
ARCHITECTURE_KEYS = ("arch", "patch_size", "out_dim", "use_bn_in_head")
STATE_KEYS = ("student", "teacher", "optimizer", "dino_loss", "epoch")
NUMBERED = re.compile(r"checkpoint(\d+)\.pth")


def checkpoint_state(ctx: TrainContext, next_epoch: int, length: RunLength) -> dict[str, Any]:
    """The authors' layout, loadable with ``weights_only=True`` (no ``module.`` prefixes).

    ``args`` are the settings as asked; ``fitted`` the run's length as it ran (the time budget
    may have shortened it).
    """
    return {
        "student": ctx.student_module.state_dict(),
        "teacher": ctx.teacher_module.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "epoch": next_epoch,
        "args": config_to_dict(ctx.config),
        "fitted": asdict(length),
        "dino_loss": ctx.dino_loss.state_dict(),
        "fp16_scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
    }


def read_resume_state(path: Path) -> dict[str, Any]:
    """A checkpoint that holds every part of a run, or :class:`CheckpointError` saying why not."""
    ckpt = load_checkpoint(path)
    missing = [key for key in STATE_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path.name} lacks {', '.join(missing)}: not a training checkpoint")
    return ckpt


def numbered_checkpoints(output_dir: Path) -> list[Path]:
    """``checkpointNNNN.pth`` files in ``output_dir``, newest (highest number) first."""
    found = [
        (int(m.group(1)), p)
        for p in output_dir.glob("checkpoint*.pth")
        if (m := NUMBERED.fullmatch(p.name)) and p.is_file()
    ]
    return [p for _, p in sorted(found, reverse=True)]


def _fallback(output_dir: Path, error: CheckpointError) -> tuple[Path, dict[str, Any]]:
    """The newest readable numbered checkpoint after ``checkpoint.pth`` failed with ``error``."""
    logger.warning("%s is unreadable: %s", output_dir / CHECKPOINT_NAME, error)
    for candidate in numbered_checkpoints(output_dir):
        try:
            ckpt = read_resume_state(candidate)
        except CheckpointError as exc:
            logger.warning("%s is unreadable too: %s", candidate, exc)
            continue
        logger.warning("falling back to the newest readable numbered checkpoint %s", candidate)
        return candidate, ckpt
    raise StartupError(
        f"{CHECKPOINT_NAME} in {output_dir} is unreadable ({error}) and no readable "
        f"checkpointNNNN.pth is beside it; pass --resume_from PATH of a good checkpoint, or move "
        f"{CHECKPOINT_NAME} away to start afresh"
    )


def find_resume_state(cfg: TrainConfig, output_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """``(path, checkpoint)`` to resume from, ``None`` for a fresh run.

    ``--resume_from`` must be readable; an unreadable ``checkpoint.pth`` falls back to the
    newest readable ``checkpointNNNN.pth`` (named in the log).
    """
    if cfg.resume_from:
        path = Path(cfg.resume_from)
        if not path.is_file():
            raise StartupError(f"--resume_from {path}: no such file; give a checkpoint .pth file")
        try:
            return path, read_resume_state(path)
        except CheckpointError as exc:
            raise StartupError(f"--resume_from {path}: {exc}; give another checkpoint") from None
    path = output_dir / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return path, read_resume_state(path)
    except CheckpointError as exc:
        return _fallback(output_dir, exc)


def resume_if_possible(ctx: TrainContext, output_dir: Path) -> int:
    """Load the checkpoint :func:`find_resume_state` picks into every part of ``ctx``; return
    the next epoch (0 for a fresh run)."""
    found = find_resume_state(ctx.config, output_dir)
    if found is None:
        return 0
    path, ckpt = found
    old = ckpt.get("args") or {}
    for key in ARCHITECTURE_KEYS:
        ours = getattr(ctx.config, key)
        if key in old and old[key] != ours:
            raise StartupError(
                f"{path} was trained with {key}={old[key]!r} but this run has "
                f"{key}={ours!r}; use another --output_dir or the same {key}"
            )
    ctx.student_module.load_state_dict(ckpt["student"])
    ctx.teacher_module.load_state_dict(ckpt["teacher"])
    ctx.optimizer.load_state_dict(ckpt["optimizer"])
    ctx.dino_loss.load_state_dict(ckpt["dino_loss"])
    if ctx.scaler is not None and ckpt.get("fp16_scaler"):
        ctx.scaler.load_state_dict(ckpt["fp16_scaler"])
    logger.info("resumed from %s at epoch %d", path, ckpt["epoch"])
    return int(ckpt["epoch"])


def check_output_dir(output_dir: Path) -> None:
    """Create ``output_dir`` and prove it writable, or raise :class:`StartupError`."""
    probe = output_dir / f".write-check-{os.getpid()}.tmp"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StartupError(
            f"--output_dir {output_dir} cannot be written ({reason}); choose a writable folder"
        ) from None


def _epoch_extras(ctx: TrainContext, epoch: int, last_epoch: bool) -> dict[str, Any]:
    """k-NN evaluation and attention probes (rank 0 only)."""
    cfg = ctx.config
    extras: dict[str, Any] = {}
    backbone = ctx.teacher_module.backbone
    if cfg.knn_every and (epoch + 1) % cfg.knn_every == 0:
        from trainer.eval.knn import knn_evaluate

        results = knn_evaluate(
            backbone,
            cfg.knn_train_data,
            cfg.knn_val_data,
            ctx.device,
            cfg.knn_k,
            resize=cfg.knn_resize,
            crop=cfg.knn_crop,
            batch_size=cfg.batch_size_per_gpu,
            num_workers=min(cfg.num_workers, 4),
        )
        extras.update({f"knn_{k}": v for k, v in results.items()})
    if cfg.probe_images and (epoch % cfg.probe_every == 0 or last_epoch):
        from trainer.eval.probes import save_attention_probes

        out = Path(cfg.output_dir) / "probes" / f"epoch{epoch:04d}"
        size = cfg.probe_size or cfg.global_crops_size
        save_attention_probes(backbone, cfg.probe_images, out, size, ctx.device)
    return extras


def snapshot_summary(cfg: TrainConfig, done: int, epochs: int) -> str:
    """The label of a run folder's ``teacher_backbone.safetensors`` (the service shows it)."""
    name = Path(cfg.output_dir).resolve().name
    return (
        f"{cfg.arch}/{cfg.patch_size} DINO run {name}, teacher after epoch {done} of {epochs}, "
        "not evaluated (python -m trainer.export names the file and adds the model card)"
    )


def save_epoch_outputs(
    ctx: TrainContext, epoch: int, stats: dict[str, Any], length: RunLength
) -> dict[str, Any]:
    """Extras, a log.txt line, then checkpoint.pth, checkpointNNNN.pth and
    teacher_backbone.safetensors: once the checkpoint says an epoch is done, its line is in
    log.txt (a line without its checkpoint is dropped on resume, see :func:`trim_history`)."""
    cfg = ctx.config
    out = Path(cfg.output_dir)
    last_epoch = epoch + 1 >= length.epochs
    log_stats = {
        **{f"train_{k}": v for k, v in stats.items()},
        "epoch": epoch,
        **_epoch_extras(ctx, epoch, last_epoch),
    }
    with open(out / "log.txt", "a") as fh:
        fh.write(json.dumps(log_stats) + "\n")
    if (epoch + 1) % cfg.checkpoint_every == 0 or last_epoch:
        state = checkpoint_state(ctx, epoch + 1, length)
        atomic_torch_save(state, out / CHECKPOINT_NAME)
        if cfg.saveckp_freq and epoch % cfg.saveckp_freq == 0:
            atomic_torch_save(state, out / f"checkpoint{epoch:04d}.pth")
        export_backbone_safetensors(
            ctx.teacher_module.backbone,
            out / BACKBONE_EXPORT_NAME,
            cfg.arch,
            epoch + 1,
            extra={
                "summary": snapshot_summary(cfg, epoch + 1, length.epochs),
                "run": out.resolve().name,
            },
        )
    return log_stats


def _split_lines(path: Path, next_epoch: int) -> tuple[list[str], list[str]]:
    """The lines of a JSON-lines file from epochs before ``next_epoch``, and the others (a line
    cut short by a kill is among the others)."""
    kept, dropped = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record.get("epoch", next_epoch)) < next_epoch
        except (ValueError, TypeError):
            keep = False
        (kept if keep else dropped).append(line)
    return kept, dropped


def trim_history(output_dir: Path, next_epoch: int) -> None:
    """Move the lines of ``log.txt`` and ``metrics.jsonl`` from epochs the run does again to
    ``log.txt.replaced`` and ``metrics.jsonl.replaced``.

    A run killed mid-epoch (or an elastic restart, or ``--resume_from`` an older checkpoint)
    goes on from the checkpoint's epoch; the lines of the epochs it runs again would otherwise
    stay beside the new ones, so the history would show those epochs twice."""
    for name in ("log.txt", "metrics.jsonl"):
        path = output_dir / name
        if not path.is_file():
            continue
        kept, dropped = _split_lines(path, next_epoch)
        if dropped:
            with open(output_dir / f"{name}.replaced", "a") as fh:
                fh.write("".join(f"{line}\n" for line in dropped))
            _atomic_write_text(path, "".join(f"{line}\n" for line in kept))
            logger.info(
                "%s: %d line(s) of epochs from %d on moved to %s.replaced (they run again)",
                name,
                len(dropped),
                next_epoch,
                name,
            )


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def fit_to_budget(
    parts: RunParts,
    budget: TimeBudget,
    length: RunLength,
    done: int,
    epoch_s: float,
    pending_s: float,
) -> RunLength:
    """The run's length after ``done`` epochs (rank 0 decides for all).

    When it changes, the schedules and the loss's teacher temperatures are rebuilt for it;
    when the run stops here, they stay the ones this epoch ran with.
    """
    ctx = parts.ctx
    total = budget.epochs_after(done, time.time(), epoch_s, pending_s)
    total = dist_utils.broadcast_int(total, ctx.device)
    if total == length.epochs:
        return length
    logger.info(
        "time budget (%.1f min): %d epochs in all instead of %d (last epoch took %.1f s)",
        budget.limit_s / 60,
        total,
        length.epochs,
        epoch_s,
    )
    if total <= done:
        if budget.warmup_epochs >= done:
            logger.warning(
                "the time budget ends the run within its lr warm-up: the weights are not annealed"
            )
        return RunLength(done, length.warmup_epochs, length.warmup_teacher_temp_epochs)
    fitted = budget.fit(total)
    ctx.budget = "fitted"
    cfg = ctx.config
    ctx.schedules = build_schedules(cfg, len(parts.loader), parts.env.world_size, fitted)
    ctx.dino_loss.set_schedule(
        cfg.warmup_teacher_temp, cfg.teacher_temp, fitted.warmup_teacher_temp_epochs, fitted.epochs
    )
    return fitted


def _train_epochs(parts: RunParts, epoch: int, budget: TimeBudget | None) -> dict[str, Any]:
    """Epochs from ``epoch`` to the (possibly fitted) end; returns the last epoch's log line."""
    ctx = parts.ctx
    cfg = ctx.config
    length = RunLength.of(cfg)
    last: dict[str, Any] = {}
    save_s = 0.0
    while epoch < length.epochs:
        seed_everything(cfg.seed + epoch * 1009 + parts.env.rank)
        parts.sampler.set_epoch(epoch)
        t0 = time.time()
        stats = train_one_epoch(ctx, parts.loader, epoch)
        if budget is not None:  # decided before saving, so the probes know the last epoch
            length = fit_to_budget(
                parts, budget, length, epoch + 1, time.time() - t0 + save_s, save_s
            )
        if stats["corrupt_files"]:
            logger.warning(
                "epoch %d: skipped %d unreadable image file(s)", epoch, stats["corrupt_files"]
            )
        t1 = time.time()
        if dist_utils.is_main_process():
            last = save_epoch_outputs(ctx, epoch, stats, length)
            logger.info("epoch %d: %s", epoch, json.dumps(last))
        dist_utils.barrier()
        save_s = time.time() - t1
        epoch += 1
    return last


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training described by ``cfg``; returns the last epoch's log line."""
    env, device = dist_utils.init_distributed(cfg.device, cfg.dist_url)
    dist_utils.setup_logging()
    output_dir = Path(cfg.output_dir)
    if dist_utils.is_main_process():
        check_output_dir(output_dir)
    parts = build_run(cfg, env, device)
    epoch = resume_if_possible(parts.ctx, output_dir)
    if dist_utils.is_main_process():
        trim_history(output_dir, epoch)
    started = time.time()
    budget = TimeBudget.for_config(cfg, started) if cfg.time_limit_minutes > 0 else None
    parts.ctx.budget = None if budget is None else "planned"
    try:
        last = _train_epochs(parts, epoch, budget)
    finally:
        if parts.ctx.metrics is not None:
            parts.ctx.metrics.close()
    logger.info("training finished in %.1f min", (time.time() - started) / 60)
    dist_utils.cleanup()
    return last
