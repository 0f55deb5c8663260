"""Weighted k-NN classification on frozen ViT features, as in the DINO paper (section 4.1).

Features are the backbone's CLS output, L2-normalised. A test image's ``k`` nearest
training features (cosine similarity ``s``) each vote for their class with weight
``exp(s / T)`` (T = 0.07); classes are ranked by their summed votes; top-1 and top-5
accuracy are reported for every ``k``.

Features are computed on the frozen-backbone runner (:mod:`trainer.eval.runner`); under
``torchrun`` each process takes its share of the images and the features are gathered back in
dataset order. Any DINO, DINOv2 or DINOv3 file loads (:mod:`trainer.eval.backbone`).

    python -m trainer.eval.knn --checkpoint runs/x/checkpoint.pth --train_data DIR --val_data DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import transforms

from trainer.data.dataset import SafeImageDataset
from trainer.data.images import scan_image_folder
from trainer.eval.backbone import load_eval_backbone
from trainer.eval.runner import collect, collect_dataset, frozen_network
from trainer.eval.shards import join_launcher_group, leave_group
from trainer.model.inference_precision import add_precision_flag
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07
logger = logging.getLogger(__name__)


def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int,
    T: float,
    num_classes: int,
    chunk: int = 1024,
) -> tuple[float, float]:
    """Top-1 and top-5 accuracy (%) of the exp(sim/T)-weighted k-NN vote (normalised features)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, train_feats.shape[0])
    train_labels = train_labels.to(train_feats.device)
    n_top5 = min(5, k, num_classes)
    correct1 = correct5 = 0
    for start in range(0, test_feats.shape[0], chunk):
        feats = test_feats[start : start + chunk].to(train_feats.device)
        labels = test_labels[start : start + chunk].to(train_feats.device)
        sims, idx = (feats @ train_feats.T).topk(k, dim=1)
        neighbours = train_labels[idx]  # (n, k)
        votes = torch.zeros(feats.shape[0], num_classes, device=feats.device, dtype=sims.dtype)
        votes.scatter_add_(1, neighbours, (sims / T).exp())
        ranked = votes.argsort(dim=1, descending=True)
        correct1 += int((ranked[:, 0] == labels).sum())
        top = ranked[:, :n_top5]
        hits5 = (top == labels[:, None]) & (
            votes.gather(1, top) > 0
        )  # a class with no vote is no guess
        correct5 += int(hits5.any(dim=1).sum())
    total = max(test_feats.shape[0], 1)
    return 100.0 * correct1 / total, 100.0 * correct5 / total


def normalised_cls(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The backbone output (CLS), float32 and L2-normalised: the k-NN feature."""
    return F.normalize(model(images).float(), dim=1)


def extract_features(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device | str,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised CLS features (float32, CPU) and labels of every readable image."""
    try:
        return collect(model, loader, normalised_cls, torch.device(device), precision)
    except ValueError as exc:
        raise ValueError("no readable images to extract features from") from exc


def dataset_features(
    model: nn.Module,
    samples: list[tuple[Path, int]],
    transform: transforms.Compose,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 128,
    num_workers: int = 4,
    distributed: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-NN features and labels of ``samples`` in order (unreadable files dropped); with
    ``distributed``, sharded over the joined process group and gathered on every rank."""
    try:
        feats, index = collect_dataset(
            model,
            SafeImageDataset(samples, transform),
            normalised_cls,
            device,
            precision,
            batch_size,
            num_workers,
            "k-NN features",
            distributed,
        )
    except ValueError as exc:
        raise ValueError("no readable images to extract features from") from exc
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return feats, labels[index]


def eval_transform(resize: int = 256, crop: int = 224) -> transforms.Compose:
    """Resize the short side (bicubic), centre-crop, ImageNet-normalise."""
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def knn_evaluate(
    model: nn.Module,
    train_data: str | Path,
    val_data: str | Path,
    device: torch.device | str,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = DEFAULT_TEMPERATURE,
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 128,
    num_workers: int = 4,
    precision: str = "fp32",
    distributed: bool = False,
) -> dict[str, float]:
    """``{"k20_top1": ..., "k20_top5": ...}`` for every k, on two ImageFolder trees.

    ``model`` runs in ``precision`` (its int8 copy already made for int8); with ``distributed``
    the features are sharded over the joined process group (every rank gets the results)."""
    device = torch.device(device)
    train_samples, train_classes = scan_image_folder(train_data)
    val_samples, val_classes = scan_image_folder(val_data)
    if len(train_classes) != len(val_classes):
        raise ValueError(
            f"train data has {len(train_classes)} classes but val data has {len(val_classes)}"
        )
    view = eval_transform(resize, crop)
    run = (device, precision, batch_size, num_workers, distributed)
    train_feats, train_labels = dataset_features(model, train_samples, view, *run)
    val_feats, val_labels = dataset_features(model, val_samples, view, *run)
    results = {}
    for k in ks:
        top1, top5 = knn_classify(
            train_feats, train_labels, val_feats, val_labels, k, temperature, len(train_classes)
        )
        results[f"k{k}_top1"] = top1
        results[f"k{k}_top5"] = top5
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "trainer.eval.knn",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint.pth, teacher_backbone.safetensors or an official backbone .pth",
    )
    p.add_argument("--train_data", required=True, help="labelled ImageFolder used as the k-NN bank")
    p.add_argument("--val_data", required=True, help="labelled ImageFolder to classify")
    p.add_argument(
        "--which",
        default="teacher",
        choices=("teacher", "student"),
        help="network of a training checkpoint",
    )
    p.add_argument("--resize", type=int, default=256, help="short side after resizing")
    p.add_argument("--crop", type=int, default=224, help="centre-crop side")
    p.add_argument("--nb_knn", type=int, nargs="+", default=list(DEFAULT_KS), help="k values")
    p.add_argument(
        "--temperature", type=float, default=DEFAULT_TEMPERATURE, help="vote temperature T"
    )
    p.add_argument("--batch_size", type=int, default=128, help="images per forward pass")
    p.add_argument("--num_workers", type=int, default=4, help="data-loading workers")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    add_precision_flag(p)
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the results and settings to this JSON file (for the model card)",
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    rank, world, device = join_launcher_group(args.device)
    model, info = load_eval_backbone(args.checkpoint, args.which)
    model, precision = frozen_network(model.to(device), args.precision, device)
    try:
        results = knn_evaluate(
            model,
            args.train_data,
            args.val_data,
            device,
            args.nb_knn,
            args.temperature,
            args.resize,
            args.crop,
            args.batch_size,
            args.num_workers,
            precision,
            distributed=world > 1,
        )
    finally:
        leave_group()
    if rank == 0:
        _report(args, info, results, precision)
    return results


def _report(args: argparse.Namespace, info: Any, results: dict[str, float], precision: str) -> None:
    for k in args.nb_knn:
        top1 = results[f"k{k}_top1"]
        top5 = results[f"k{k}_top5"]
        print(f"{k}-NN classifier result: Top1: {top1:.2f}, Top5: {top5:.2f}")
    print(json.dumps(results))
    if args.json is not None:
        settings = {
            "model": f"{args.checkpoint} ({info.arch}/{info.patch_size}, {args.which})",
            "train_data": str(args.train_data),
            "val_data": str(args.val_data),
            "resize": args.resize,
            "crop": args.crop,
            "temperature": args.temperature,
            "precision": precision,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**settings, **results}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
