"""Every training flag in one typed dataclass, and the command-line parser built from it.

The flag names, meanings and defaults of the DINO authors' ``main_dino.py`` are kept, so
their command lines work unchanged; the flags this trainer adds are listed after them.
Values come from, in increasing priority: the defaults below, ``--config file.yaml``, and
the command line. Every value is checked at once; a bad one fails with a message that
names the valid choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.data.augment import check_crop_scale
from trainer.model.vit import ARCHS
from trainer.train.optim import OPTIMIZERS

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_TRUE = ("on", "true", "1", "yes")
_FALSE = ("off", "false", "0", "no")


def _flag(help_text: str, **extra: Any) -> dict[str, Any]:
    return {"help": help_text, **extra}


@dataclass
class TrainConfig:
    """All settings of a DINO pretraining run (``args`` in the checkpoint is ``asdict`` of it)."""

    # -- model (official flags) ---------------------------------------------------------
    arch: str = field(default="vit_small", metadata=_flag("Backbone size.", choices=tuple(ARCHS)))
    patch_size: int = field(
        default=16,
        metadata=_flag(
            "Patch size in pixels (8 or 16 for the official sizes; "
            "any size, e.g. 4, for small images)."
        ),
    )
    out_dim: int = field(default=65536, metadata=_flag("Output dimension K of the DINO head."))
    norm_last_layer: bool = field(
        default=True,
        metadata=_flag(
            "Fix the norm of the head's weight-normalised last layer (true is more stable; false can "
            "give better results with vit_small)."
        ),
    )
    momentum_teacher: float = field(
        default=0.996,
        metadata=_flag(
            "Base EMA momentum of the teacher; it follows a cosine to 1 during training."
        ),
    )
    use_bn_in_head: bool = field(default=False, metadata=_flag("Batch norm in the head's MLP."))
    # -- temperatures -------------------------------------------------------------------
    warmup_teacher_temp: float = field(
        default=0.04, metadata=_flag("Teacher temperature at epoch 0.")
    )
    teacher_temp: float = field(
        default=0.04, metadata=_flag("Teacher temperature after the warm-up.")
    )
    warmup_teacher_temp_epochs: int = field(
        default=0, metadata=_flag("Epochs of linear teacher-temperature warm-up.")
    )
    # -- optimisation -------------------------------------------------------------------
    use_fp16: bool | None = field(
        default=None,
        metadata=_flag(
            "Official flag: true selects fp16 mixed precision with a loss scaler, false selects fp32. "
            "Unset (default), --precision decides."
        ),
    )
    weight_decay: float = field(
        default=0.04, metadata=_flag("Initial weight decay (cosine schedule start).")
    )
    weight_decay_end: float = field(
        default=0.4, metadata=_flag("Final weight decay (cosine schedule end).")
    )
    clip_grad: float = field(
        default=3.0, metadata=_flag("Per-parameter gradient-norm clip; 0 disables it.")
    )
    batch_size_per_gpu: int = field(
        default=64, metadata=_flag("Images per process (per GPU) and step.")
    )
    epochs: int = field(default=100, metadata=_flag("Number of training epochs."))
    freeze_last_layer: int = field(
        default=1, metadata=_flag("Epochs during which the head's last layer gets no update.")
    )
    lr: float = field(
        default=0.0005,
        metadata=_flag(
            "Peak learning rate for a total batch of 256; scaled by total batch / 256 after the "
            "warm-up."
        ),
    )
    warmup_epochs: int = field(
        default=10, metadata=_flag("Epochs of linear learning-rate warm-up.")
    )
    min_lr: float = field(
        default=1e-6, metadata=_flag("Final learning rate of the cosine schedule.")
    )
    optimizer: str = field(default="adamw", metadata=_flag("Optimizer.", choices=OPTIMIZERS))
    drop_path_rate: float = field(
        default=0.1, metadata=_flag("Stochastic depth rate of the student.")
    )
    # -- multi-crop ---------------------------------------------------------------------
    global_crops_scale: tuple[float, float] = field(
        default=(0.4, 1.0),
        metadata=_flag(
            "Area range (min max) of the 2 global crops, relative to the image.", nargs=2
        ),
    )
    local_crops_number: int = field(
        default=8, metadata=_flag("Number of small local crops; 0 disables them.")
    )
    local_crops_scale: tuple[float, float] = field(
        default=(0.05, 0.4),
        metadata=_flag("Area range (min max) of the local crops, relative to the image.", nargs=2),
    )
    # -- misc (official) ----------------------------------------------------------------
    data_path: str = field(
        default="/path/to/imagenet/train/",
        metadata=_flag(
            "Training images: an ImageFolder tree (class folders) or a plain folder of images."
        ),
    )
    output_dir: str = field(
        default=".",
        metadata=_flag(
            "Where checkpoints and logs go; a run restarted with the same folder resumes."
        ),
    )
    saveckp_freq: int = field(
        default=20, metadata=_flag("Also keep checkpointNNNN.pth every this many epochs.")
    )
    checkpoint_every: int = field(
        default=1,
        metadata=_flag(
            "Write checkpoint.pth and teacher_backbone.safetensors every N epochs (and after the "
            "last); a restart resumes from the last one written."
        ),
    )
    seed: int = field(default=0, metadata=_flag("Random seed."))
    num_workers: int = field(default=10, metadata=_flag("Data-loading worker processes per GPU."))
    dist_url: str = field(
        default="env://", metadata=_flag("URL of the process-group rendezvous (official flag).")
    )
    local_rank: int = field(
        default=0, metadata=_flag("Ignored; torchrun sets LOCAL_RANK (official flag).")
    )
    # -- added by this trainer ----------------------------------------------------------
    device: str = field(
        default="auto", metadata=_flag("auto picks cuda when available.", choices=DEVICES)
    )
    precision: str = field(
        default="auto",
        metadata=_flag(
            "Autocast precision. auto: bf16 on GPUs that support it, else fp16 on CUDA, fp32 on CPU.",
            choices=PRECISIONS,
        ),
    )
    global_crops_size: int = field(
        default=224, metadata=_flag("Side of the global crops in pixels.")
    )
    local_crops_size: int = field(default=96, metadata=_flag("Side of the local crops in pixels."))
    knn_every: int = field(
        default=0, metadata=_flag("Run k-NN evaluation every N epochs (0: never).")
    )
    knn_train_data: str | None = field(
        default=None, metadata=_flag("Labelled ImageFolder for the k-NN bank.")
    )
    knn_val_data: str | None = field(
        default=None, metadata=_flag("Labelled ImageFolder evaluated by k-NN.")
    )
    knn_resize: int = field(
        default=256, metadata=_flag("k-NN evaluation: resize the short side to this.")
    )
    knn_crop: int = field(default=224, metadata=_flag("k-NN evaluation: centre crop of this side."))
    knn_k: list[int] = field(
        default_factory=lambda: [20],
        metadata=_flag("k values of the in-training k-NN evaluation.", nargs="+"),
    )
    probe_images: str | None = field(
        default=None,
        metadata=_flag(
            "Folder of images whose teacher attention overlays are saved to probes/epochNNNN/ "
            "after each epoch."
        ),
    )
    probe_size: int = field(
        default=0, metadata=_flag("Probe image side in pixels (0: the global crop size).")
    )
    probe_every: int = field(
        default=1,
        metadata=_flag(
            "Save probe snapshots every N epochs (and always after epoch 0 and the last epoch)."
        ),
    )
    time_limit_minutes: float = field(
        default=0.0,
        metadata=_flag(
            "Wall-clock budget of this run in minutes (0: none). After each epoch the remaining "
            "epochs are fitted to the budget: the run gets shorter than --epochs and the lr, wd, "
            "momentum and teacher-temperature schedules are rebuilt for the new length, so the run "
            "still ends on its schedules' final values. The checkpoint keeps the flags as given "
            "in 'args' and the fitted length in 'fitted'."
        ),
    )
    gpu_augment: bool | None = field(
        default=None,
        metadata=_flag(
            "Decode JPEGs and make the crops on the GPU (default: true on CUDA, false on CPU)."
        ),
    )
    compile: bool = field(default=False, metadata=_flag("torch.compile the student and teacher."))
    log_every: int = field(
        default=10,
        metadata=_flag(
            "Read metrics back from the device, update the progress bar and write metrics.jsonl "
            "every N steps."
        ),
    )
    config: str | None = field(
        default=None,
        metadata=_flag(
            "YAML file of flag values (keys are flag names without --); command-line flags "
            "override it."
        ),
    )


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
    return cfg


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
