"""A real training run in seconds (ViT-tiny, 32 px crops, a dozen noise photos), for the tests
of the tools that read a run folder: export, evaluation and the model card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_data import make_image_folder

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
