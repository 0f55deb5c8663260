"""Attention snapshots during training: the teacher's last-block CLS attention per head.

For each probe image, ``out_dir`` receives the resized image (``<stem>.png``) and, per head
``h``, a heat map overlay (``<stem>_head<h>_heat.png``) and the mask keeping ``threshold``
of the head's attention mass (``<stem>_head<h>_mask.png``, the paper's procedure).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import functional as TF

from trainer.data.images import DECODE_ERRORS, list_images, load_rgb
from trainer.model.attention_maps import (
    heat_overlay,
    mask_overlay,
    threshold_masks,
    upsample_nearest,
)
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD, DinoViT

DEFAULT_THRESHOLD = 0.6
DEFAULT_LIMIT = 8
logger = logging.getLogger(__name__)


def list_probe_images(folder: str | Path, limit: int = DEFAULT_LIMIT) -> list[Path]:
    """The first ``limit`` images of ``folder`` (sorted by name)."""
    return list_images(folder)[:limit]


def _prepare(image: Image.Image, size: int, patch: int) -> tuple[Image.Image, torch.Tensor]:
    side = max(patch, size - size % patch)
    resized = image.resize((side, side), Image.Resampling.BICUBIC)
    tensor = TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)
    return resized, tensor.unsqueeze(0)


def _save_heads(
    resized: Image.Image, attn: torch.Tensor, patch: int, out_dir: Path, stem: str, threshold: float
) -> None:
    """``attn`` is ``(heads, gh, gw)``; writes one heat and one mask overlay per head."""
    masks = threshold_masks(attn, threshold).numpy()
    maps = attn.float().numpy()
    resized.save(out_dir / f"{stem}.png")
    for h in range(attn.shape[0]):
        heat_overlay(resized, upsample_nearest(maps[h], patch)).save(
            out_dir / f"{stem}_head{h}_heat.png"
        )
        mask_overlay(resized, upsample_nearest(masks[h], patch)).save(
            out_dir / f"{stem}_head{h}_mask.png"
        )


@torch.no_grad()
def save_attention_probes(
    backbone: DinoViT,
    image_dir: str | Path,
    out_dir: str | Path,
    size: int,
    device: torch.device | str = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
    limit: int = DEFAULT_LIMIT,
) -> list[Path]:
    """Write per-head overlays of the images in ``image_dir``; returns the images probed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = backbone.training
    backbone.eval()
    done = []
    try:
        for path in list_probe_images(image_dir, limit):
            try:
                image = load_rgb(path)
            except DECODE_ERRORS as exc:
                logger.warning("probe image %s skipped: %s", path, exc)
                continue
            resized, tensor = _prepare(image, size, backbone.patch_size)
            attn = backbone.get_cls_attention(tensor.to(device))[0].cpu()
            _save_heads(resized, attn, backbone.patch_size, out_dir, path.stem, threshold)
            done.append(path)
    finally:
        backbone.train(was_training)
    return done
