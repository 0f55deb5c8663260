"""Every training flag in one typed dataclass: name, type, default and help text.

The flag names, meanings and defaults of the DINO authors' ``main_dino.py`` are kept, so
their command lines work unchanged; the flags this trainer adds are listed after them.
:mod:`trainer.train.config` builds the command-line parser from these fields, reads YAML
and validates the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.model.device import DEVICE_CHOICES, PRECISION_CHOICES
from trainer.model.vit import ARCHS
from trainer.train.optim import OPTIMIZERS

DEVICES = DEVICE_CHOICES
PRECISIONS = PRECISION_CHOICES


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
            "Fix the norm of the head's weight-normalised last layer (true is more stable; "
            "false can give better results with vit_small)."
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
            "Official flag: true selects fp16 mixed precision with a loss scaler, false selects "
            "fp32. Unset (default), --precision decides."
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
            "Autocast precision. auto: bf16 on GPUs that support it, else fp16 on CUDA, fp32 on "
            "CPU.",
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
    adapt_small_data: bool = field(
        default=False,
        metadata=_flag(
            "On a folder of fewer than 1,000 images, lower both teacher temperatures to at most "
            "0.025 (stronger sharpening), against the drift of the teacher's targets towards "
            "uniform that such folders show. The run says so at start; 'args' in the "
            "checkpoint hold the temperatures it used."
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
    resume_from: str | None = field(
        default=None,
        metadata=_flag(
            "Resume from this checkpoint file instead of --output_dir/checkpoint.pth (which, "
            "when unreadable, is replaced by the newest readable checkpointNNNN.pth)."
        ),
    )
    config: str | None = field(
        default=None,
        metadata=_flag(
            "YAML file of flag values (keys are flag names without --); command-line flags "
            "override it."
        ),
    )
