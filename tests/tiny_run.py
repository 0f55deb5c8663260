"""A real training run in seconds (ViT-tiny, 32 px crops, a dozen noise photos), for the tests
of the tools that read a run folder: export, evaluation and the model card; and the
command-line arguments of an even smaller run for the tests of the training command."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.test_data import make_image_folder
from trainer.model.head import DINOHead
from trainer.train import build
from trainer.train.config import TrainConfig, make_config

TINY_RECIPE = """
arch: vit_tiny
patch_size: 16
epochs: 2
batch_size_per_gpu: 4
global_crops_size: 32
local_crops_size: 16
local_crops_number: 1
out_dim: 32
warmup_epochs: 1
precision: fp32
device: cpu
num_workers: 0
log_every: 1
saveckp_freq: 0
"""


def train_tiny_run(folder: Path, images: int = 12) -> Path:
    """Train two epochs on ``images`` photos in ``folder/photos``; returns the run folder."""
    from trainer import run

    photos = make_image_folder(Path(folder) / "photos", {"": images}, size=(40, 48))
    recipe = Path(folder) / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    out = Path(folder) / "run"
    run.main(["--config", str(recipe), "--data_path", str(photos), "--output_dir", str(out)])
    return out


TINY_FLAGS: dict[str, object] = {
    "device": "cpu",
    "arch": "vit_tiny",
    "patch_size": 4,
    "global_crops_size": 16,
    "local_crops_size": 8,
    "local_crops_number": 1,
    "out_dim": 16,
    "epochs": 1,
    "warmup_epochs": 0,
    "batch_size_per_gpu": 4,
    "num_workers": 0,
}


def tiny_cli_args(data: Path, out: Path, **flags: object) -> list[str]:
    """Command-line arguments of ``trainer.run`` for a ViT-tiny run on 16 px crops of ``data``
    into ``out``: :data:`TINY_FLAGS`, changed or extended by ``flags`` (``--name value``)."""
    args = ["--data_path", str(data), "--output_dir", str(out)]
    for name, value in {**TINY_FLAGS, **flags}.items():
        args += [f"--{name}", str(value)]
    return args


def patch_tiny_networks(
    monkeypatch: pytest.MonkeyPatch, hidden_dim: int = 32, bottleneck_dim: int = 8
) -> None:
    """Make ``trainer.train.build`` build a 2-block ViT and a small DINO head (the one place)."""
    from tests.test_checkpointing import _tiny_vit

    monkeypatch.setattr(build, "build_vit", _tiny_vit)
    monkeypatch.setattr(
        build, "DINOHead", partial(DINOHead, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim)
    )


def tiny_student_teacher(
    monkeypatch: pytest.MonkeyPatch, **config: object
) -> tuple[TrainConfig, nn.Module, nn.Module]:
    """A 2-block ViT student and teacher (8 px global, 4 px local crops, ``out_dim`` 16) built
    from ``make_config(**config)``; the teacher is offset by 0.01 so an EMA step is visible."""
    patch_tiny_networks(monkeypatch)
    cfg = make_config(
        **{
            "arch": "vit_tiny",
            "patch_size": 4,
            "global_crops_size": 8,
            "local_crops_size": 4,
            "local_crops_number": 1,
            "out_dim": 16,
            **config,
        }
    )
    torch.manual_seed(0)
    student, teacher = build.build_student_teacher(cfg)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.01)
    return cfg, student, teacher


def make_masked_images(folder: Path, count: int = 3, size: int = 40) -> tuple[Path, Path]:
    """``folder/images/*.jpg`` with random binary masks ``folder/masks/<stem>.png``."""
    images = make_image_folder(Path(folder) / "images", {"": count}, size=(size, size))
    masks = Path(folder) / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for path in sorted(images.iterdir()):
        mask = (rng.random((size, size)) > 0.5).astype(np.uint8) * 255
        Image.fromarray(mask).save(masks / f"{path.stem}.png")
    return images, masks


def seg_result(
    jaccard: float,
    per_head: list[float],
    best_counts: list[int],
    images: int = 200,
    image_size: int = 480,
) -> dict:
    """A result of ``python -m trainer.eval.seg --json`` with the given figures."""
    return {
        "images": images,
        "image_size": image_size,
        "threshold": 0.6,
        "jaccard": jaccard,
        "per_head_jaccard": per_head,
        "best_head_counts": best_counts,
    }
