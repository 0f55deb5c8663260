"""Attention-mask Jaccard on DUTS-TE, the paper's protocol.

Each image is resized to 480x480 (bicubic), the last block's CLS attention is taken per head,
each head is thresholded to keep 60% of its mass, the masks are upsampled to pixels
(nearest), and the best head's IoU with the ground truth (threshold 128) is kept. The mean
over images is reported. ``../shared/data/README.md`` gives 20.7 for a randomly initialised
ViT-S/16 on 200 images, measured with the authors' code.

    python benchmarks/duts_jaccard.py --arch vit_small --patch_size 16 --images 200
    python benchmarks/duts_jaccard.py --checkpoint checkpoints/x.safetensors
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.attention_maps import jaccard, threshold_masks  # noqa: E402
from trainer.checkpoint import load_backbone  # noqa: E402
from trainer.vit import IMAGENET_MEAN, IMAGENET_STD, build_vit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "data" / "duts-te-1k.tar.gz"


def dataset_dir(data_root: Path) -> Path:
    """Extract the archive once into ``data_root`` and return the dataset folder."""
    folder = data_root / "duts-te-1k"
    if not (folder / "images").is_dir():
        if not ARCHIVE.exists():
            raise SystemExit(f"{ARCHIVE} not found: this benchmark needs ../shared/data")
        data_root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(data_root, filter="data")
    return folder


def to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((t - mean) / std).unsqueeze(0)


def image_iou(model, image: Image.Image, gt: Image.Image, size: int, threshold: float) -> float:
    """Best head's Jaccard for one image, at pixel resolution."""
    x = to_tensor(image, size)
    p = model.patch_size
    with torch.inference_mode():
        attn = model.get_cls_attention(x)[0]  # heads, gh, gw
    masks = threshold_masks(attn, threshold)
    masks = masks.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
    h, w = masks.shape[-2:]
    gt_arr = np.asarray(gt.convert("L").resize((size, size), Image.NEAREST))[:h, :w] >= 128
    return float(jaccard(masks, torch.from_numpy(gt_arr)).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="any checkpoint the service reads; default: random init")
    ap.add_argument("--arch", default="vit_small")
    ap.add_argument("--patch_size", type=int, default=16)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--image_size", type=int, default=480)
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data_root", type=Path, default=ROOT / ".data")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model, info = load_backbone(args.checkpoint)
        name = f"{args.checkpoint} ({info.arch}/{info.patch_size})"
    else:
        model, name = build_vit(args.arch, args.patch_size).eval(), f"random-init {args.arch}/{args.patch_size}"
    folder = dataset_dir(args.data_root)
    paths = sorted((folder / "images").glob("*.jpg"))[: args.images]
    start, ious = time.perf_counter(), []
    for path in paths:
        with Image.open(path) as img, Image.open(folder / "masks" / f"{path.stem}.png") as gt:
            ious.append(image_iou(model, img, gt, args.image_size, args.threshold))
    secs = time.perf_counter() - start
    print(f"model: {name}")
    print(f"images: {len(ious)}  image_size: {args.image_size}  threshold: {args.threshold}")
    print(f"jaccard (best head, mean over images): {100 * np.mean(ious):.1f}")
    print(f"time: {secs:.1f} s ({1000 * secs / max(len(ious), 1):.0f} ms/image, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
