"""The command-line parser and YAML reader of the training flags, and their validation.

The flags are the fields of :class:`trainer.train.flags.TrainConfig` (the DINO authors'
``main_dino.py`` flags, then this trainer's own). Values come from, in increasing priority:
the defaults, ``--config file.yaml``, and the command line. Every value is checked at once;
a bad one fails with a message that names the valid choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from pathlib import Path
from typing import Any

import yaml

from trainer.data.augment import check_crop_scale
from trainer.model.vit import ARCHS
from trainer.train.flags import DEVICES, PRECISIONS, TrainConfig
from trainer.train.optim import OPTIMIZERS

logger = logging.getLogger(__name__)
_TRUE = ("on", "true", "1", "yes")


class StartupError(ValueError):
    """A setting or folder that makes the run impossible, found before any model is built.

    ``trainer/run.py`` prints its one-line message and exits with status 2.
    """


_FALSE = ("off", "false", "0", "no")


def bool_flag(value: str | bool) -> bool:
    """Parse true/false words like the authors' ``bool_flag``."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    choices = ", ".join(_TRUE + _FALSE)
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r}; use one of {choices}")


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _scalar_type(annotation: Any) -> Any:
    """The per-item parser for one annotation: bool_flag, int, float or str."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args and typing.get_origin(annotation) not in (list, tuple) else annotation
    if typing.get_origin(base) in (list, tuple):
        base = typing.get_args(base)[0]
    return bool_flag if base is bool else base


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per :class:`TrainConfig` field."""
    parser = argparse.ArgumentParser(
        "DINO",
        description="Self-supervised DINO pretraining of a Vision Transformer.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    types = _field_types()
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind = _scalar_type(types[f.name])
        if kind is bool_flag:
            meta.setdefault("metavar", "true|false")
        names = [f"--{f.name}"]
        if f.name == "local_rank":
            names.append("--local-rank")  # as torch.distributed.launch passes it
        parser.add_argument(*names, type=kind, default=default, **meta)
    return parser


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SystemExit(f"config file {path} must hold a mapping of flag names to values")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SystemExit(
            f"unknown keys in {path}: {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    return data


def _coerce_yaml_value(parser: argparse.ArgumentParser, name: str, value: Any) -> Any:
    """Run a YAML value through the flag's own parser so YAML and CLI values are checked alike."""
    action = next(a for a in parser._actions if a.dest == name)
    try:
        if isinstance(value, (list, tuple)):
            return [action.type(v) for v in value]
        return None if value is None else action.type(value)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        parser.error(f"config file: bad value {value!r} for {name}: {exc}")


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults, then ``--config`` YAML, then command-line flags; validated."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        data = _read_yaml(known.config)
        parser.set_defaults(**{k: _coerce_yaml_value(parser, k, v) for k, v in data.items()})
    namespace = parser.parse_args(argv)
    try:
        return make_config(**vars(namespace))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable; parser.error exits


def make_config(**values: Any) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from keyword values (defaults for the rest)."""
    for key in ("global_crops_scale", "local_crops_scale"):
        if key in values and values[key] is not None:
            values[key] = tuple(float(v) for v in values[key])
    if "knn_k" in values and values["knn_k"] is not None:
        values["knn_k"] = [int(k) for k in values["knn_k"]]
    cfg = TrainConfig(**values)
    validate(cfg)
    return clamp_warmup(cfg)


def clamp_warmup(cfg: TrainConfig) -> TrainConfig:
    """Warm-ups that do not fit the run are shortened, each with a warning.

    The lr warm-up becomes ``epochs - 1`` when it is not shorter than the run (so the run still
    ends with annealed weights), the teacher-temperature warm-up ``epochs`` when it is longer.
    The defaults (10 warm-up epochs) are the authors' for 100-epoch runs; a short run should
    still work.
    """
    changes: dict[str, int] = {}
    if cfg.warmup_epochs >= cfg.epochs and cfg.warmup_epochs > 0:
        changes["warmup_epochs"] = cfg.epochs - 1
    if cfg.warmup_teacher_temp_epochs > cfg.epochs:
        changes["warmup_teacher_temp_epochs"] = cfg.epochs
    for name, value in changes.items():
        logger.warning(
            "--%s %d does not fit --epochs %d: using %d",
            name,
            getattr(cfg, name),
            cfg.epochs,
            value,
        )
    return dataclasses.replace(cfg, **changes) if changes else cfg


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def validate(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the bad setting and what is allowed."""
    _check_choice("arch", cfg.arch, tuple(ARCHS))
    _check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _check_choice("device", cfg.device, DEVICES)
    _check_choice("precision", cfg.precision, PRECISIONS)
    check_crop_scale("global_crops_scale", cfg.global_crops_scale)
    check_crop_scale("local_crops_scale", cfg.local_crops_scale)
    positive = (
        "patch_size",
        "out_dim",
        "batch_size_per_gpu",
        "epochs",
        "global_crops_size",
        "local_crops_size",
        "log_every",
        "knn_resize",
        "knn_crop",
        "probe_every",
        "checkpoint_every",
    )
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    non_negative = (
        "local_crops_number",
        "warmup_epochs",
        "warmup_teacher_temp_epochs",
        "freeze_last_layer",
        "saveckp_freq",
        "num_workers",
        "knn_every",
        "probe_size",
        "clip_grad",
        "weight_decay",
        "weight_decay_end",
        "lr",
        "min_lr",
        "drop_path_rate",
        "time_limit_minutes",
    )
    for name in non_negative:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.momentum_teacher <= 1.0:
        raise ValueError(f"momentum_teacher must be in [0, 1], got {cfg.momentum_teacher}")
    if cfg.teacher_temp <= 0 or cfg.warmup_teacher_temp <= 0:
        raise ValueError("teacher_temp and warmup_teacher_temp must be > 0")
    if cfg.patch_size > cfg.local_crops_size or cfg.patch_size > cfg.global_crops_size:
        raise ValueError(
            f"patch_size {cfg.patch_size} is larger than a crop "
            f"(global {cfg.global_crops_size}, local {cfg.local_crops_size})"
        )
    if cfg.knn_every and not (cfg.knn_train_data and cfg.knn_val_data):
        raise ValueError("--knn_every needs --knn_train_data and --knn_val_data")
    if any(k < 1 for k in cfg.knn_k):
        raise ValueError(f"knn_k values must be positive, got {cfg.knn_k}")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain dict of built-in types (tuples as lists) for checkpoints and logs."""
    out = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
