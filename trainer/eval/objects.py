"""Object discovery (LOST, TokenCut) scored by CorLoc and box IoU against foreground masks.

For each image/mask pair (paired by stem as in :mod:`trainer.eval.seg`):

1. the image is converted to RGB and normalised with the model's mean/std, at its own size
   (the LOST authors' protocol; default) or resized to ``image_size x image_size`` (bicubic);
   partial edge patches are dropped;
2. LOST (:mod:`trainer.model.lost`; or TokenCut, ``--method tokencut``) gives one box from
   the last block's keys, which is mapped back to the pixels of the original image;
3. the ground-truth boxes are those of the 8-connected components of the mask's foreground
   (gray >= 128, at the image's size);
4. an image counts for CorLoc when the box has an IoU >= 0.5 with any ground-truth box; the
   mean box IoU averages, over images, the best IoU with a ground-truth box. The IoU with the
   bounding box of the whole foreground is reported too.

    python -m trainer.eval.objects --checkpoint runs/x/checkpoint.pth --images DIR --masks DIR
    python -m trainer.eval.objects --random_init --arch vit_small --images DIR --masks DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from skimage.measure import label

from trainer.data.images import DECODE_ERRORS, load_rgb
from trainer.eval.seg import (
    GT_THRESHOLD,
    _load_model,
    _no_pairs_error,
    image_tensor,
    load_gray,
    pair_images_and_masks,
)
from trainer.model.lost import DEFAULT_K_PATCHES, box_iou, lost, mask_box
from trainer.model.tokencut import tokencut
from trainer.model.vit import ARCHS, IMAGENET_MEAN, IMAGENET_STD

CORLOC_IOU = 0.5
METHODS = ("lost", "tokencut")
logger = logging.getLogger(__name__)


def mask_boxes(mask: np.ndarray) -> list[list[int]]:
    """Boxes ``[x0, y0, x1, y1]`` (end exclusive) of the 8-connected components of ``mask``."""
    labels = label(np.asarray(mask, dtype=bool), connectivity=2)
    boxes = []
    for cc in range(1, int(labels.max()) + 1):
        rows, cols = np.nonzero(labels == cc)
        boxes.append([int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1])
    return boxes


def foreground_box(mask: np.ndarray) -> list[int] | None:
    """The bounding box of all of ``mask``'s foreground, or None when it has none."""
    return mask_box(mask) if np.any(mask) else None


def score_box(pred: Sequence[float], mask: np.ndarray) -> dict[str, Any]:
    """CorLoc hit, best IoU over the mask's component boxes and IoU with its foreground box."""
    gt = mask_boxes(mask)
    best = max((box_iou(pred, g) for g in gt), default=0.0)
    whole = foreground_box(mask)
    return {
        "corloc": best >= CORLOC_IOU,
        "iou": best,
        "foreground_iou": 0.0 if whole is None else box_iou(pred, whole),
        "gt_boxes": len(gt),
    }


def native_tensor(
    image: Image.Image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(1, 3, H, W)`` input at the image's own size, scaled to [0, 1] and normalised."""
    t = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    t = t.permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((t - m) / s).unsqueeze(0)


def image_box(
    model: Any,
    image: Image.Image,
    image_size: int | None = None,
    k_patches: int = DEFAULT_K_PATCHES,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    method: str = "lost",
) -> list[float]:
    """The ``method``'s (lost or tokencut) box ``[x0, y0, x1, y1]`` in ``image``'s pixels."""
    p = model.patch_size
    width, height = image.size
    if image_size is None:
        x = native_tensor(image, mean, std)
    else:
        x = image_tensor(image, image_size, mean, std)
    if min(x.shape[-2:]) < p:
        raise ValueError(f"image of {tuple(x.shape[-2:])} px is smaller than the patch size {p}")
    x = x.to(device)
    result = lost(model, x, k_patches) if method == "lost" else tokencut(model, x)
    sx, sy = width / x.shape[-1], height / x.shape[-2]
    x0, y0, x1, y1 = result.box
    return [x0 * sx, y0 * sy, x1 * sx, y1 * sy]


def gt_mask(gt: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Boolean foreground of a gray mask at ``size`` ``(W, H)`` (nearest resize if needed)."""
    gray = gt.convert("L")
    if gray.size != size:
        gray = gray.resize(size, Image.NEAREST)
    return np.asarray(gray) >= GT_THRESHOLD


def _summarise(scores: list[dict[str, Any]], missing: int, unreadable: int, seconds: float) -> dict:
    n = len(scores)
    return {
        "images": n,
        "skipped": missing + unreadable,
        "missing_masks": missing,
        "unreadable": unreadable,
        "corloc": 100.0 * sum(s["corloc"] for s in scores) / n,
        "mean_box_iou": 100.0 * sum(s["iou"] for s in scores) / n,
        "mean_foreground_box_iou": 100.0 * sum(s["foreground_iou"] for s in scores) / n,
        "seconds": seconds,
        "ms_per_image": 1000.0 * seconds / n,
    }


def evaluate_folder(
    model: Any,
    images_dir: str | Path,
    masks_dir: str | Path,
    image_size: int | None = None,
    k_patches: int = DEFAULT_K_PATCHES,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    method: str = "lost",
) -> dict[str, Any]:
    """CorLoc (%), mean box IoU (%) and mean foreground-box IoU (%) of ``method`` over a folder.

    Images without a mask and unreadable files are skipped (logged, counted in ``skipped``).
    ``model`` must already be on ``device``; it is put in eval mode meanwhile.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    pairs, missing = pair_images_and_masks(images_dir, masks_dir, limit)
    if not pairs:
        raise _no_pairs_error(images_dir, masks_dir, missing, 0)
    was_training = model.training
    model.eval()
    scores: list[dict[str, Any]] = []
    unreadable = 0
    start = time.perf_counter()
    try:
        for image_path, mask_path in pairs:
            try:
                image, gt = load_rgb(image_path), load_gray(mask_path)
            except DECODE_ERRORS as exc:
                unreadable += 1
                logger.warning("skipping unreadable %s / %s: %s", image_path, mask_path, exc)
                continue
            box = image_box(model, image, image_size, k_patches, device, mean, std, method)
            scores.append(
                {"image": image_path.name, "box": box, **score_box(box, gt_mask(gt, image.size))}
            )
    finally:
        model.train(was_training)
    if not scores:
        raise _no_pairs_error(images_dir, masks_dir, missing, unreadable)
    results = _summarise(scores, missing, unreadable, time.perf_counter() - start)
    settings = {"method": method, "image_size": image_size, "k_patches": k_patches}
    return {**results, **settings, "per_image": scores}


def summary_lines(results: dict[str, Any], model_name: str) -> list[str]:
    """The human-readable report printed by the CLI."""
    size = results["image_size"] or "native"
    return [
        f"model: {model_name}",
        f"method: {results['method']}  images: {results['images']}  image_size: {size}  "
        f"k_patches: {results['k_patches']}",
        f"skipped: {results['skipped']} ({results['missing_masks']} without a mask, "
        f"{results['unreadable']} unreadable)",
        f"CorLoc (box IoU >= {CORLOC_IOU} with a mask component): {results['corloc']:.1f}",
        f"mean box IoU (best component): {results['mean_box_iou']:.1f}",
        f"mean box IoU (whole-foreground box): {results['mean_foreground_box_iou']:.1f}",
        f"time: {results['seconds']:.1f} s ({results['ms_per_image']:.0f} ms/image, "
        f"{torch.get_num_threads()} threads)",
    ]


def build_parser() -> argparse.ArgumentParser:
    """The command's flags; the model source flags are those of ``trainer.eval.seg``."""
    p = argparse.ArgumentParser(
        "trainer.eval.objects",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", help="checkpoint.pth, teacher_backbone.safetensors or an official .pth"
    )
    source.add_argument(
        "--random_init", action="store_true", help="a randomly initialised --arch/--patch_size"
    )
    p.add_argument(
        "--which", default=None, choices=("teacher", "student"), help="(default teacher)"
    )
    p.add_argument(
        "--arch", default=None, choices=tuple(ARCHS), help="with --random_init (default vit_small)"
    )
    p.add_argument("--patch_size", type=int, default=None, help="with --random_init (default 16)")
    p.add_argument(
        "--seed", type=int, default=None, help="with --random_init: torch seed (default 0)"
    )
    p.add_argument("--images", required=True, type=Path, help="folder of images (<id>.jpg, ...)")
    p.add_argument("--masks", required=True, type=Path, help="folder of gray masks (<id>.png)")
    p.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="resize to this square side; default: each image at its own size (LOST's protocol)",
    )
    p.add_argument("--method", default="lost", choices=METHODS, help="object discovery method")
    p.add_argument("--k_patches", type=int, default=DEFAULT_K_PATCHES, help="LOST's seed-set size")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most this many pairs")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    p.add_argument(
        "--json", type=Path, default=None, help="also write the results to this JSON file"
    )
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.checkpoint and any(v is not None for v in (args.arch, args.patch_size, args.seed)):
        p.error("--arch, --patch_size and --seed only apply with --random_init")
    if args.random_init and args.which is not None:
        p.error("--which only applies with --checkpoint")
    for flag in ("image_size", "k_patches", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag} must be positive, got {value}")


def write_json(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` atomically (temp file in the same folder, then replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(results, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the command; returns the results (also printed, and written with ``--json``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from trainer.model.device import pick_device

    device = pick_device(args.device)
    model, name, mean, std = _load_model(parser, args)
    model.to(device)
    if args.image_size is not None and args.image_size < model.patch_size:
        parser.error(
            f"--image_size {args.image_size} is smaller than the patch size {model.patch_size}"
        )
    results = evaluate_folder(
        model,
        args.images,
        args.masks,
        args.image_size,
        args.k_patches,
        args.limit,
        device,
        mean,
        std,
        args.method,
    )
    results = {"model": name, **results}
    for line in summary_lines(results, name):
        print(line)
    if args.json is not None:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
