"""Attention-mask Jaccard against ground-truth foreground masks, as in the DINO paper.

The protocol of Caron et al. (2021), "Jaccard similarity between the ground truth and the
masks from the last-block CLS attention", with the authors' mask procedure:

1. each image is converted to RGB, resized to ``image_size x image_size`` (bicubic) and
   normalised with the model's mean/std;
2. the last block's CLS-to-patch attention is read per head (``model.get_cls_attention``,
   ``(1, heads, gh, gw)``; partial edge patches are dropped);
3. each head is thresholded to keep ``threshold`` of its attention mass
   (:func:`trainer.model.attention_maps.threshold_masks`), and the patch masks are upsampled to
   pixels by repeating each patch ``patch_size`` times (nearest);
4. the ground truth (gray PNG, foreground where the value is >= 128) is resized to
   ``image_size x image_size`` (nearest) and cropped to the masks' ``gh*p x gw*p`` pixels;
5. each head's IoU (:func:`trainer.model.attention_maps.jaccard`) is computed; the best head's IoU
   is kept per image, and the mean over images is reported (in percent).

Images are paired with masks by file stem (``images/<id>.jpg`` with ``masks/<id>.png``).

    python -m trainer.eval.seg --checkpoint runs/x/checkpoint.pth --images DIR --masks DIR
    python -m trainer.eval.seg --random_init --arch vit_small --images DIR --masks DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from trainer.data.images import DECODE_ERRORS, IMAGE_SUFFIXES, list_images, load_rgb
from trainer.eval.backbone import load_eval_backbone
from trainer.eval.runner import frozen_network, iter_outputs
from trainer.model.attention_maps import jaccard, threshold_masks
from trainer.model.inference_precision import add_precision_flag
from trainer.model.vit import ARCHS, IMAGENET_MEAN, IMAGENET_STD

MASK_SUFFIX = ".png"
GT_THRESHOLD = 128
logger = logging.getLogger(__name__)


def _files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    return list_images(folder, suffixes=suffixes)


def pair_images_and_masks(
    images_dir: str | Path, masks_dir: str | Path, limit: int | None = None
) -> tuple[list[tuple[Path, Path]], int]:
    """``(pairs, missing)``: ``(image, mask)`` pairs by stem, and how many images lack a mask.

    Images are files with a suffix in ``IMAGE_SUFFIXES``; masks are ``<stem>.png``. With
    ``limit``, scanning stops after ``limit`` pairs (``missing`` counts the images seen so far).
    """
    masks = {p.stem: p for p in sorted(_files(Path(masks_dir), (MASK_SUFFIX,)))}
    pairs: list[tuple[Path, Path]] = []
    missing = 0
    for image in sorted(_files(Path(images_dir), IMAGE_SUFFIXES), key=lambda p: (p.stem, p.name)):
        if limit is not None and len(pairs) >= limit:
            break
        if image.stem in masks:
            pairs.append((image, masks[image.stem]))
        else:
            missing += 1
            logger.warning("skipping %s: no %s%s in %s", image, image.stem, MASK_SUFFIX, masks_dir)
    return pairs, missing


def load_gray(path: str | Path) -> Image.Image:
    """Open and fully decode a mask as 8-bit gray (raises on a corrupt file)."""
    with Image.open(path) as img:
        img.load()
        return img.convert("L")


def image_tensor(
    image: Image.Image,
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """``(1, 3, S, S)`` input: RGB, bicubic resize to ``S x S``, scaled to [0, 1], normalised."""
    resized = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
    t = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((t - m) / s).unsqueeze(0)


def gt_tensor(gt: Image.Image, image_size: int) -> torch.Tensor:
    """Boolean ``(S, S)`` foreground: gray, nearest resize to ``S x S``, value >= 128."""
    arr = np.asarray(gt.convert("L").resize((image_size, image_size), Image.NEAREST))
    return torch.from_numpy(arr >= GT_THRESHOLD)


def image_head_ious(
    model: Any,
    image: Image.Image,
    gt: Image.Image,
    image_size: int = 480,
    threshold: float = 0.6,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Per-head IoU (float32, CPU, shape ``(heads,)``) of one image's attention masks with ``gt``.

    ``model`` (already on ``device``, in eval mode) needs ``patch_size`` and ``get_cls_attention``.
    """
    p = model.patch_size
    if image_size < p:
        raise ValueError(f"image_size {image_size} is smaller than the patch size {p}")
    x = image_tensor(image, image_size, mean, std).to(device)
    with torch.inference_mode():
        attn = model.get_cls_attention(x)[0].float().cpu()  # heads, gh, gw
    masks = threshold_masks(attn, threshold)
    masks = masks.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
    h, w = masks.shape[-2:]
    return jaccard(masks, gt_tensor(gt, image_size)[:h, :w])


def _no_pairs_error(
    images_dir: str | Path, masks_dir: str | Path, missing: int, unreadable: int
) -> ValueError:
    return ValueError(
        f"no readable image/mask pair: looked for images ({', '.join(IMAGE_SUFFIXES)}) "
        f"in {images_dir} "
        f"and masks (<image stem>{MASK_SUFFIX}) in {masks_dir}; "
        f"{missing} image(s) without a mask, {unreadable} unreadable"
    )


def _summarise(
    ious: list[torch.Tensor], missing: int, unreadable: int, seconds: float
) -> dict[str, Any]:
    table = torch.stack(ious)  # images, heads
    best = table.argmax(dim=1)
    return {
        "images": len(ious),
        "skipped": missing + unreadable,
        "missing_masks": missing,
        "unreadable": unreadable,
        "jaccard": 100.0 * float(table.max(dim=1).values.mean()),
        "per_head_jaccard": [100.0 * float(v) for v in table.mean(dim=0)],
        "best_head_counts": [int(c) for c in torch.bincount(best, minlength=table.shape[1])],
        "seconds": seconds,
        "ms_per_image": 1000.0 * seconds / len(ious),
    }


class _PairDataset(torch.utils.data.Dataset):
    """``(image tensor (3, S, S), ground truth (S, S) bool)`` per pair; None when unreadable."""

    def __init__(self, pairs, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.pairs, self.image_size, self.mean, self.std = pairs, image_size, mean, std
        self.unreadable = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        image_path, mask_path = self.pairs[index]
        try:
            image, gt = load_rgb(image_path), load_gray(mask_path)
        except DECODE_ERRORS as exc:
            self.unreadable += 1
            logger.warning("skipping unreadable %s / %s: %s", image_path, mask_path, exc)
            return None
        x = image_tensor(image, self.image_size, self.mean, self.std)[0]
        return x, gt_tensor(gt, self.image_size)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
    good = [it for it in items if it is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.bool)
    return torch.stack([g[0] for g in good]), torch.stack([g[1] for g in good])


def _cls_attention(model: Any, x: torch.Tensor) -> torch.Tensor:
    return model.get_cls_attention(x)


def evaluate_folder(
    model: Any,
    images_dir: str | Path,
    masks_dir: str | Path,
    image_size: int = 480,
    threshold: float = 0.6,
    limit: int | None = None,
    device: torch.device | str = "cpu",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Jaccard (%) of the best head, per-head means and best-head counts over a folder pair.

    Images without a mask and unreadable files are skipped (logged, counted in ``skipped``).
    ``model`` must already be on ``device`` (its int8 copy for int8); it runs on the
    frozen-backbone runner one image at a time (in eval mode meanwhile).
    """
    pairs, missing = pair_images_and_masks(images_dir, masks_dir, limit)
    if not pairs:
        raise _no_pairs_error(images_dir, masks_dir, missing, 0)
    p = model.patch_size
    if image_size < p:
        raise ValueError(f"image_size {image_size} is smaller than the patch size {p}")
    data = _PairDataset(pairs, image_size, mean, std)
    loader = torch.utils.data.DataLoader(data, batch_size=1, collate_fn=_collate)
    ious = []
    start = time.perf_counter()
    device = torch.device(device)
    for attn, gts in iter_outputs(
        model, loader, _cls_attention, device, precision, len(pairs), "jaccard"
    ):
        masks = threshold_masks(attn[0].cpu(), threshold)
        masks = masks.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)
        h, w = masks.shape[-2:]
        ious.append(jaccard(masks, gts[0][:h, :w]))
    if not ious:
        raise _no_pairs_error(images_dir, masks_dir, missing, data.unreadable)
    results = _summarise(ious, missing, data.unreadable, time.perf_counter() - start)
    return {**results, "image_size": image_size, "threshold": threshold}


def summary_lines(results: dict[str, Any], model_name: str) -> list[str]:
    """The human-readable report printed by the CLI and the DUTS benchmark."""
    per_head = "  ".join(f"h{i}: {v:.1f}" for i, v in enumerate(results["per_head_jaccard"]))
    counts = "  ".join(f"h{i}: {c}" for i, c in enumerate(results["best_head_counts"]))
    return [
        f"model: {model_name}",
        f"images: {results['images']}  image_size: {results['image_size']}  "
        f"threshold: {results['threshold']}",
        f"skipped: {results['skipped']} ({results.get('missing_masks', 0)} without a mask, "
        f"{results.get('unreadable', 0)} unreadable)",
        f"jaccard (best head, mean over images): {results['jaccard']:.1f}",
        f"jaccard per head (mean over images): {per_head}",
        f"best-head counts: {counts}",
        f"time: {results['seconds']:.1f} s ({results['ms_per_image']:.0f} ms/image, "
        f"{torch.get_num_threads()} threads)",
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "trainer.eval.seg",
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
        "--which",
        default=None,
        choices=("teacher", "student"),
        help="network of a training checkpoint (default teacher)",
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
        "--image_size", type=int, default=480, help="side of the square the images are resized to"
    )
    p.add_argument(
        "--threshold", type=float, default=0.6, help="attention mass each head's mask keeps"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="evaluate at most this many image/mask pairs"
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    add_precision_flag(p)
    p.add_argument(
        "--json", type=Path, default=None, help="also write the results to this JSON file"
    )
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.checkpoint and any(v is not None for v in (args.arch, args.patch_size, args.seed)):
        p.error("--arch, --patch_size and --seed only apply with --random_init")
    if args.random_init and args.which is not None:
        p.error("--which only applies with --checkpoint")
    if not 0.0 < args.threshold <= 1.0:
        p.error(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.image_size < 1:
        p.error(f"--image_size must be positive, got {args.image_size}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be positive, got {args.limit}")


def _load_model(
    p: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[nn.Module, str, tuple, tuple]:
    """``(model, description, mean, std)`` from the parsed source arguments."""
    if args.checkpoint:
        model, info = load_eval_backbone(args.checkpoint, args.which or "teacher")
        name = (
            f"{args.checkpoint} ({info.family} {info.arch}/{info.patch_size}, {info.layout}, "
            f"epoch {info.epoch})"
        )
        return model, name, tuple(info.mean), tuple(info.std)
    from trainer.model.vit import build_vit

    arch = args.arch or "vit_small"
    patch = 16 if args.patch_size is None else args.patch_size
    seed = 0 if args.seed is None else args.seed
    torch.manual_seed(seed)
    try:
        model = build_vit(arch, patch)
    except ValueError as exc:
        p.error(str(exc))
    return model.eval(), f"random-init {arch}/{patch} (seed {seed})", IMAGENET_MEAN, IMAGENET_STD


def main(argv: list[str] | None = None) -> dict[str, Any]:
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
    if args.image_size < model.patch_size:
        parser.error(
            f"--image_size {args.image_size} is smaller than the patch size {model.patch_size}"
        )
    model, precision = frozen_network(model, args.precision, device)
    results = evaluate_folder(
        model,
        args.images,
        args.masks,
        args.image_size,
        args.threshold,
        args.limit,
        device,
        mean,
        std,
        precision,
    )
    results = {"model": name, "precision": precision, **results}
    for line in summary_lines(results, name):
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
