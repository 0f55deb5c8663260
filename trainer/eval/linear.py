"""Linear probe on frozen ViT features, with the DINO authors' protocol (eval_linear.py).

Features are the CLS tokens of the last ``--n_last_blocks`` blocks after the final norm,
concatenated (plus the mean patch token of the last block with ``--avgpool_patchtokens``). A
linear layer (weight ~ N(0, 0.01), zero bias) is trained with SGD (momentum 0.9, no weight
decay), learning rate ``--lr * batch / 256`` with a cosine decay to 0 over ``--epochs``, on
RandomResizedCrop + flip views; validation uses Resize(256, bicubic) + CenterCrop(224).
Top-1 and top-5 accuracy are reported in percent.

    python -m trainer.eval.linear --pretrained_weights CKPT --data_path DATA --output_dir OUT

``DATA`` holds ``train/`` and ``val/`` ImageFolder trees.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import transforms

from trainer.data.dataset import SafeImageDataset, make_loader
from trainer.data.images import list_images
from trainer.eval.backbone import load_eval_backbone
from trainer.eval.runner import collect, frozen_network, iter_outputs
from trainer.model.checkpoint import atomic_torch_save
from trainer.model.inference_precision import add_precision_flag
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)
CACHE_HELP = (
    "compute the features once, without train augmentation, then train the linear layer on the "
    "cached tensors (much faster; NOT the paper's protocol, which augments every epoch)"
)


class LinearEvalError(ValueError):
    """Bad data or flags for the linear probe; the message says what is wrong."""


def scan_classes(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """ImageFolder samples (sorted classes, sorted files); an empty class folder is an error."""
    if not root.is_dir():
        raise LinearEvalError(f"{root} does not exist or is not a folder (want an ImageFolder)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise LinearEvalError(f"{root} has no class sub-folders (want {root}/<class>/<image>)")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = list_images(root / name, recursive=True)
        if not files:
            raise LinearEvalError(
                f"class folder {root / name} has no images; every class of an ImageFolder "
                "needs at least one (remove the folder or add images)"
            )
        samples += [(p, label) for p in files]
    return samples, classes


def train_transform(crop: int = 224) -> transforms.Compose:
    """The authors' train view: RandomResizedCrop, horizontal flip, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(crop),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def val_transform(resize: int = 256, crop: int = 224) -> transforms.Compose:
    """The authors' val view: Resize (bicubic), CenterCrop, ImageNet normalisation."""
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def probe_features(
    model: nn.Module, images: torch.Tensor, n_last_blocks: int, avgpool: bool
) -> torch.Tensor:
    """Concatenated CLS tokens of the last ``n_last_blocks`` normalised block outputs, then (with
    ``avgpool``) the last block's mean patch token. The authors' code allows avgpool only with
    one block and interleaves the two vectors; a permutation, equivalent for a linear layer."""
    outs = model.get_intermediate_layers(images, n_last_blocks)
    feats = [o[:, 0] for o in outs]
    if avgpool:
        feats.append(outs[-1][:, getattr(model, "num_prefix_tokens", 1) :].mean(dim=1))
    return torch.cat(feats, dim=-1).float()


class LinearClassifier(nn.Module):
    """One linear layer, weight ~ N(0, 0.01), bias 0 (the authors' initialisation)."""

    def __init__(self, dim: int, num_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_labels)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def extract(model: nn.Module, loader, args: argparse.Namespace, device) -> tuple[torch.Tensor, ...]:
    """Probe features (CPU, float32) and labels of every readable image, in loader order."""

    def fn(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return probe_features(m, x, args.n_last_blocks, args.avgpool)

    try:
        return collect(model, loader, fn, device, args.precision, len(loader.dataset))
    except ValueError as exc:
        raise LinearEvalError(str(exc)) from exc


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Top-1 and top-5 (top-min(5, classes)) correct counts."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == labels[:, None]
    return float(hit[:, 0].sum()), float(hit.any(dim=1).sum())


def _shuffled(feats: torch.Tensor, labels: torch.Tensor, batch: int, seed: int):
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        yield feats[idx], labels[idx]


def evaluate_linear(clf: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) of the linear layer on features."""
    clf.eval()
    with torch.no_grad():
        logits = torch.cat([clf(feats[i : i + 4096]) for i in range(0, len(feats), 4096)])
    top1, top5 = accuracy(logits, labels)
    return {"top1": 100.0 * top1 / len(labels), "top5": 100.0 * top5 / len(labels)}


def _save_npz(path: Path, feats: torch.Tensor, labels: torch.Tensor) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, features=feats.numpy(), labels=labels.numpy())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


class Probe:
    """Everything one linear-probe run holds: the frozen backbone, the data and the layer."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, device: torch.device) -> None:
        self.args, self.model, self.device = args, model.eval(), device
        root = Path(args.data_path)
        self.train_samples, classes = scan_classes(root / "train")
        self.val_samples, val_classes = scan_classes(root / "val")
        if val_classes != classes:
            raise LinearEvalError(f"train classes {classes} differ from val classes {val_classes}")
        self.num_labels = args.num_labels or len(classes)
        if self.num_labels < len(classes):
            raise LinearEvalError(f"--num_labels {args.num_labels} < {len(classes)} classes")
        self.batch = args.batch_size_per_gpu
        self.lr = args.lr * self.batch / 256.0

    def loader(self, samples, transform, shuffle: bool):
        sampler = None
        if shuffle:
            gen = torch.Generator().manual_seed(self.args.seed)
            sampler = torch.utils.data.RandomSampler(range(len(samples)), generator=gen)
        dataset = SafeImageDataset(samples, transform)
        pin = self.device.type == "cuda"
        return make_loader(dataset, self.batch, sampler, self.args.num_workers, pin, False)

    def features(self, samples) -> tuple[torch.Tensor, torch.Tensor]:
        view = val_transform(self.args.resize, self.args.crop)
        return extract(self.model, self.loader(samples, view, False), self.args, self.device)

    def epoch_source(self, epoch: int, cache: tuple[torch.Tensor, torch.Tensor] | None):
        if cache is not None:
            yield from _shuffled(*cache, self.batch, self.args.seed + epoch)
            return
        if not hasattr(self, "_train_loader"):
            self._train_loader = self.loader(
                self.train_samples, train_transform(self.args.crop), True
            )
        args = self.args

        def fn(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return probe_features(m, x, args.n_last_blocks, args.avgpool)

        total = len(self.train_samples)
        yield from iter_outputs(
            self.model, self._train_loader, fn, self.device, args.precision, total, "train"
        )


def train(probe: Probe, val: tuple[torch.Tensor, torch.Tensor], out: Path) -> dict[str, Any]:
    """SGD + cosine schedule; the best and last layers saved atomically; the final metrics."""
    args = probe.args
    clf = LinearClassifier(val[0].shape[1], probe.num_labels).to(probe.device)
    opt = torch.optim.SGD(clf.parameters(), lr=probe.lr, momentum=0.9, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs, eta_min=0)
    cache = probe.features(probe.train_samples) if args.cache_features else None
    val_dev = (val[0].to(probe.device), val[1].to(probe.device))
    best: dict[str, float] = {"top1": -math.inf}
    metrics: dict[str, float] = {}
    loss = torch.tensor(float("nan"))
    for epoch in range(args.epochs):
        clf.train()
        for feats, labels in probe.epoch_source(epoch, cache):
            loss = nn.functional.cross_entropy(clf(feats.to(probe.device)), labels.to(probe.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if (epoch + 1) % args.val_freq == 0 or epoch + 1 == args.epochs:
            metrics = {**evaluate_linear(clf, *val_dev), "epoch": epoch + 1}
            logger.info("epoch %d loss %.4f %s", epoch + 1, float(loss.detach()), metrics)
            state = {"state_dict": clf.state_dict(), **metrics, "num_labels": probe.num_labels}
            if metrics["top1"] > best["top1"]:
                best = metrics
                atomic_torch_save(state, out / "linear_best.pth")
            atomic_torch_save(state, out / "linear_last.pth")
    return {**metrics, "best_top1": best["top1"], "best_epoch": best.get("epoch")}


def load_model(args: argparse.Namespace) -> nn.Module:
    """The frozen backbone: the checkpoint, or a random ``--arch``/``--patch_size`` without one."""
    from trainer.model.vit import build_vit

    if not args.pretrained_weights:
        logger.warning("no --pretrained_weights: random %s/%d", args.arch, args.patch_size)
        torch.manual_seed(args.seed)
        return build_vit(args.arch, args.patch_size)
    model, info = load_eval_backbone(args.pretrained_weights, args.checkpoint_key)
    if (info.arch, info.patch_size) != (args.arch, args.patch_size):
        logger.info("checkpoint is %s/%d (flags ignored)", info.arch, info.patch_size)
    return model


def _bool_flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "trainer.eval.linear",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--pretrained_weights", "--checkpoint", default="", help="checkpoint to probe")
    p.add_argument("--checkpoint_key", default="teacher", choices=("teacher", "student"))
    p.add_argument("--arch", default="vit_small", help="architecture without weights")
    p.add_argument("--patch_size", type=int, default=16, help="patch size without weights")
    p.add_argument("--n_last_blocks", type=int, default=4, help="CLS tokens of the last n blocks")
    p.add_argument(
        "--avgpool_patchtokens",
        dest="avgpool",
        type=_bool_flag,
        nargs="?",
        const=True,
        default=False,
        help="also the last block's mean patch token",
    )
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.001, help="learning rate at batch 256")
    p.add_argument("--batch_size_per_gpu", type=int, default=128)
    p.add_argument("--data_path", required=True, help="folder with train/ and val/ ImageFolders")
    p.add_argument("--num_labels", type=int, default=0, help="classifier outputs (0: classes)")
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--evaluate", action="store_true", help="only evaluate --pretrained_linear")
    p.add_argument(
        "--pretrained_linear",
        type=Path,
        default=None,
        help="linear weights for --evaluate (default OUT/linear_best.pth)",
    )
    p.add_argument("--val_freq", type=int, default=1, help="epochs between validations")
    p.add_argument("--cache_features", action="store_true", help=CACHE_HELP)
    p.add_argument("--save_features", action="store_true", help="write OUT/features_val.npz")
    p.add_argument("--resize", type=int, default=256, help="val short side (bicubic)")
    p.add_argument("--crop", type=int, default=224, help="train / val crop side")
    p.add_argument("--num_workers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_precision_flag(p)
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("n_last_blocks", "epochs", "batch_size_per_gpu", "val_freq", "resize", "crop"):
        if getattr(args, name) < 1:
            raise LinearEvalError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise LinearEvalError(f"--lr must be > 0, got {args.lr}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """One linear-probe run (or evaluation); the results.json payload."""
    from trainer.model.device import pick_device

    _check(args)
    device = pick_device(args.device)
    start = time.perf_counter()
    model, args.precision = frozen_network(load_model(args).to(device), args.precision, device)
    probe = Probe(args, model, device)
    if args.n_last_blocks > len(probe.model.blocks):
        raise LinearEvalError(f"--n_last_blocks {args.n_last_blocks} > {len(probe.model.blocks)}")
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    val = probe.features(probe.val_samples)
    if args.save_features:
        _save_npz(out / "features_val.npz", *val)
    if args.evaluate:
        path = args.pretrained_linear or out / "linear_best.pth"
        if not Path(path).is_file():
            raise LinearEvalError(f"--evaluate needs trained linear weights; {path} does not exist")
        clf = LinearClassifier(val[0].shape[1], probe.num_labels)
        clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
        metrics: dict[str, Any] = evaluate_linear(
            clf.to(device), val[0].to(device), val[1].to(device)
        )
    else:
        metrics = train(probe, val, out)
    flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results = {
        **metrics,
        "protocol": "cached features (not the paper's)" if args.cache_features else "paper",
        "flags": flags,
        "timing": {"total_s": time.perf_counter() - start},
        "n_train": len(probe.train_samples),
        "n_val": len(probe.val_samples),
    }
    _write_json(out / "results.json", results)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    results = run(args)
    print(f"Linear probe: Top1: {results['top1']:.2f}, Top5: {results['top5']:.2f}")
    print(json.dumps({k: results[k] for k in ("top1", "top5")}))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
