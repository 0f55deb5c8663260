"""CIFAR-10 k-NN benchmark: DINO ViT-tiny/4 trained on CPU for a time budget vs random init.

    python -m benchmarks.cifar_knn --minutes 20 --output_dir runs/cifar_knn

1. extracts ``cifar10-jpg.tar.gz`` (``--archive``, or ``$DINO_DATA_DIR``) into the git-ignored
   ``.data/cifar10``;
2. times one short calibration epoch, then sizes the number of epochs to fit ``--minutes``;
3. trains ViT-tiny, patch 4, 32 px global / 16 px local crops, with the trainer's own run
   loop (``trainer.train.loop.train``);
4. prints weighted k-NN (k=20, T=0.07) top-1 on the CIFAR test set for the trained teacher
   and for the random-init network (same seed, hence the same initial weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tarfile
import time
from pathlib import Path

import torch

from benchmarks.data_dir import data_file
from trainer.data.images import list_images
from trainer.eval.knn import knn_evaluate
from trainer.model.checkpoint import load_backbone
from trainer.train.build import build_student_teacher, seed_everything
from trainer.train.config import make_config
from trainer.train.loop import train

ROOT = Path(__file__).resolve().parents[1]

logger = logging.getLogger("cifar_knn")
ARCHIVE_NAME = "cifar10-jpg.tar.gz"


def extract(archive: Path | None, dest: Path) -> Path:
    """Unpack the archive once (``dest/train``, ``dest/test``)."""
    if (dest / "train").is_dir() and (dest / "test").is_dir():
        return dest
    archive = data_file(ARCHIVE_NAME, archive)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    for sub in ("train", "test"):  # the archive may hold one top folder
        if not (dest / sub).is_dir():
            found = next(dest.rglob(sub), None)
            if found is None:
                raise SystemExit(f"no {sub}/ folder inside {archive}")
            found.rename(dest / sub)
    return dest


def subset(src: Path, dest: Path, per_class: int) -> Path:
    """An ImageFolder of symlinks to the first ``per_class`` images of each class (0: all)."""
    if per_class <= 0:
        return src
    if dest.is_dir():
        shutil.rmtree(dest)
    for cls in sorted(d for d in src.iterdir() if d.is_dir()):
        (dest / cls.name).mkdir(parents=True)
        for img in list_images(cls)[:per_class]:
            (dest / cls.name / img.name).symlink_to(img.resolve())
    return dest


def train_flags(data: Path, out: Path, epochs: int, args: argparse.Namespace) -> dict:
    return dict(
        data_path=str(data),
        output_dir=str(out),
        device="cpu",
        arch="vit_tiny",
        patch_size=4,
        global_crops_size=32,
        local_crops_size=16,
        local_crops_number=args.local_crops,
        out_dim=args.out_dim,
        batch_size_per_gpu=args.batch_size,
        epochs=epochs,
        warmup_epochs=1 if epochs >= 3 else 0,
        lr=args.lr,
        num_workers=args.workers,
        saveckp_freq=0,
        seed=0,
        log_every=5,
        momentum_teacher=args.momentum_teacher,
        precision=args.precision,
        norm_last_layer=args.norm_last_layer,
    )


def calibrate(data: Path, work: Path, args: argparse.Namespace) -> float:
    """Seconds per training image: median step rate of a short run (start-up excluded), +10%."""
    cal_out = work / "calibration"
    shutil.rmtree(cal_out, ignore_errors=True)
    flags = {**train_flags(data, cal_out, 1, args), "log_every": 1}
    train(make_config(**flags))
    lines = (cal_out / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["img_per_s"] for line in lines]
    steady = sorted(rates[1:] or rates)  # the first step includes warm-up
    return 1.1 / steady[len(steady) // 2]


def fit_per_class(image_budget: float, min_epochs: int, classes: int = 10, full: int = 5000) -> int:
    """Images per class so that ``min_epochs`` epochs fit the budget (all 5000 when they do)."""
    return int(max(1, min(full, image_budget / (min_epochs * classes))))


def knn_top1(model: torch.nn.Module, bank: Path, test: Path, args: argparse.Namespace) -> float:
    results = knn_evaluate(
        model,
        bank,
        test,
        "cpu",
        ks=[20],
        resize=32,
        crop=32,
        batch_size=256,
        num_workers=args.workers,
    )
    return results["k20_top1"]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--archive", type=Path, default=None, help="cifar10-jpg.tar.gz (default: $DINO_DATA_DIR/)"
    )
    p.add_argument(
        "--data_dir", type=Path, default=ROOT / ".data" / "cifar10", help="where to extract"
    )
    p.add_argument(
        "--output_dir", type=Path, default=ROOT / "runs" / "cifar_knn", help="trained run folder"
    )
    p.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    p.add_argument(
        "--train_per_class", type=int, default=0, help="training images per class (0: all 5000)"
    )
    p.add_argument(
        "--min_epochs",
        type=int,
        default=3,
        help="shrink the training set until this many epochs fit",
    )
    p.add_argument(
        "--knn_bank_per_class", type=int, default=1000, help="k-NN bank images per class (0: all)"
    )
    p.add_argument(
        "--knn_test_per_class", type=int, default=0, help="test images per class (0: all 1000)"
    )


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local_crops", type=int, default=8, help="local crops per image")
    p.add_argument("--out_dim", type=int, default=4096, help="DINO head output dimension")
    p.add_argument("--batch_size", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=0.0005, help="base lr (for a batch of 256)")
    p.add_argument(
        "--momentum_teacher", type=float, default=0.99, help="teacher EMA start (short runs: 0.99)"
    )
    p.add_argument(
        "--norm_last_layer",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=False,
        help="fix the head's last-layer norm (the authors use false for ViT-S, true for ViT-B)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="autocast on the CPU (bf16 helps on CPUs with bf16 units)",
    )
    p.add_argument("--workers", type=int, default=1, help="data-loading workers")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_data_args(p)
    _add_train_args(p)
    return p.parse_args(argv)


def _train_for_budget(root: Path, work: Path, args: argparse.Namespace) -> tuple[Path, int, float]:
    """Calibrate, size the training set and the epochs to ``--minutes``, train; returns
    (training folder, epochs, minutes spent training)."""
    cal_dir = subset(root / "train", work / "calibration_data", max(16, 6 * args.batch_size // 10))
    sec_per_image = calibrate(cal_dir, work, args)
    budget_images = args.minutes * 60 / sec_per_image
    per_class = args.train_per_class or fit_per_class(budget_images, args.min_epochs)
    train_dir = subset(root / "train", work / "train_subset", per_class)
    n_train = sum(1 for _ in train_dir.rglob("*.jpg"))
    epochs = max(1, int(budget_images / n_train))
    logger.info(
        "%.3f s/image -> %d epoch(s) of %d images in %.0f min",
        sec_per_image,
        epochs,
        n_train,
        args.minutes,
    )
    shutil.rmtree(args.output_dir, ignore_errors=True)
    started = time.perf_counter()
    train(make_config(**train_flags(train_dir, args.output_dir, epochs, args)))
    return train_dir, epochs, (time.perf_counter() - started) / 60


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    root = extract(args.archive, args.data_dir)
    work = args.data_dir.parent / "cifar_knn_work"
    bank = subset(root / "train", work / "bank", args.knn_bank_per_class)
    test = subset(root / "test", work / "test_subset", args.knn_test_per_class)
    train_dir, epochs, train_minutes = _train_for_budget(root, work, args)
    trained, _ = load_backbone(args.output_dir / "checkpoint.pth")
    seed_everything(0)
    cfg = make_config(**train_flags(train_dir, args.output_dir, epochs, args))
    random_init = build_student_teacher(cfg)[1]
    result = {
        "epochs": epochs,
        "train_images": sum(1 for _ in train_dir.rglob("*.jpg")),
        "train_minutes": round(train_minutes, 1),
        "knn_top1_trained": knn_top1(trained, bank, test, args),
        "knn_top1_random_init": knn_top1(random_init.backbone, bank, test, args),
    }
    print(
        f"k-NN (k=20) top-1 on CIFAR-10 test: trained teacher {result['knn_top1_trained']:.2f}%, "
        f"random init {result['knn_top1_random_init']:.2f}% ({epochs} epochs, "
        f"{train_minutes:.1f} min)"
    )
    print(json.dumps(result))
    (args.output_dir / "cifar_knn_result.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
