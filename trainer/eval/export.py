"""Export frozen-backbone features and attention masks of a folder of images, as ``.npz`` shards.

Every image (any depth under ``--images``, sorted by path) is converted to RGB, resized to
``--image_size`` square (bicubic) and normalised with the model's mean/std. Per image, the
shards hold what ``--outputs`` asks for:

* ``cls``: the CLS token after the final norm, ``(D,)``;
* ``patch``: the last block's patch tokens after the norm, ``(gh * gw, D)`` (register and
  storage tokens excluded);
* ``pca``: the first three principal components of the patch tokens as RGB in [0, 1],
  ``(gh, gw, 3)`` (:func:`trainer.model.feature_pca.patch_pca`, in fp32);
* ``attention``: the last block's CLS-to-patch attention per head, ``(heads, gh, gw)``;
* ``masks``: each head's attention mask keeping ``--threshold`` of its mass, ``(heads, gh, gw)``.

Shard ``k`` holds the images ``k * shard_size`` to ``(k + 1) * shard_size - 1`` (its ``index``
and ``files`` arrays name them; unreadable files are listed under ``skipped``). Each shard is
written to a temporary file and renamed, so a killed run leaves only complete shards, and a
rerun with the same settings skips them. Under ``torchrun`` rank ``r`` writes shards
``r, r + world, ...``. ``OUT/index.json`` maps every file to its shard and row, with the model,
image size, precision and flags.

    python -m trainer.eval.export --checkpoint CKPT --images DIR --output_dir OUT
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainer.data.dataset import SafeImageDataset, make_loader
from trainer.data.images import list_images
from trainer.eval.backbone import cls_and_patches, load_eval_backbone
from trainer.eval.runner import frozen_network, iter_outputs
from trainer.eval.seg import image_tensor
from trainer.eval.shards import (
    atomic_write,
    join_launcher_group,
    leave_group,
    shard_name,
    shard_ranges,
)
from trainer.model.attention_maps import threshold_masks
from trainer.model.feature_pca import patch_pca
from trainer.model.inference_precision import add_precision_flag
from trainer.model.vit import ARCHS, IMAGENET_MEAN, IMAGENET_STD, build_vit

OUTPUTS = ("cls", "patch", "pca", "attention", "masks")
INDEX = "index.json"
logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """Bad flags or an output folder that holds another export; the message says what."""


def parse_outputs(text: str) -> tuple[str, ...]:
    """``cls,patch,...`` as a tuple in the order of :data:`OUTPUTS`; unknown names refused."""
    asked = {t.strip() for t in text.split(",") if t.strip()}
    unknown = sorted(asked - set(OUTPUTS))
    if unknown or not asked:
        raise ExportError(
            f"--outputs: unknown {unknown or 'empty'}; choose from {','.join(OUTPUTS)}"
        )
    return tuple(o for o in OUTPUTS if o in asked)


class _Square:
    """PIL image -> ``(3, S, S)`` normalised tensor (the Jaccard evaluation's preprocessing)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, image: Any) -> torch.Tensor:
        return image_tensor(image, self.size, self.mean, self.std)[0]


def _forward(outputs: tuple[str, ...]):
    """The runner function: ``(cls, patches, attention)`` (empty tensors for parts not asked)."""
    want_tokens = bool({"cls", "patch", "pca"} & set(outputs))
    want_attn = bool({"attention", "masks"} & set(outputs))

    def fn(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        empty = x.new_zeros(0)
        cls, patches = cls_and_patches(model, x) if want_tokens else (empty, empty)
        attn = model.get_cls_attention(x) if want_attn else empty
        return cls, patches, attn

    return fn


def _rows(outputs: tuple[str, ...], parts, grid, threshold: float) -> dict[str, np.ndarray]:
    """One batch's arrays, by output name (PCA and masks computed in fp32)."""
    cls, patches, attn = (p.cpu() for p in parts)
    rows: dict[str, np.ndarray] = {}
    if "cls" in outputs:
        rows["cls"] = cls.numpy()
    if "patch" in outputs:
        rows["patch"] = patches.numpy()
    if "pca" in outputs:
        rows["pca"] = np.stack([patch_pca(t, grid).rgb.numpy() for t in patches])
    if "attention" in outputs:
        rows["attention"] = attn.numpy()
    if "masks" in outputs:
        rows["masks"] = threshold_masks(attn, threshold).numpy()
    return rows


class Exporter:
    """One export: the network, the files, the settings every shard records."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, meta: dict[str, Any]) -> None:
        self.args, self.model, self.meta = args, model, meta
        self.root = args.images
        self.files = list_images(args.images, recursive=True)
        if not self.files:
            raise ExportError(f"--images {args.images} holds no images")
        self.rel = [str(p.relative_to(self.root)) for p in self.files]
        p = int(model.patch_size)
        self.grid = (args.image_size // p, args.image_size // p)
        self.settings = json.dumps({**meta, "n_files": len(self.files)}, sort_keys=True)

    def shard_done(self, path: Path) -> bool:
        """Whether ``path`` is a complete shard of this export (another export's is an error)."""
        if not path.is_file():
            return False
        with np.load(path) as shard:
            if str(shard["settings"]) != self.settings:
                raise ExportError(
                    f"{path} was written with other settings or files; use a new --output_dir "
                    "or the same flags and images to resume"
                )
        return True

    def run_shard(self, k: int, indices: range) -> int:
        """Compute and atomically write shard ``k``; the number of images it ran."""
        args = self.args
        samples = [(self.files[i], i) for i in indices]
        mean, std = self.meta["mean"], self.meta["std"]
        dataset = SafeImageDataset(samples, _Square(args.image_size, mean, std))
        loader = make_loader(dataset, args.batch_size, None, args.num_workers, False, False)
        fn = _forward(self.meta["outputs"])
        chunks: list[dict[str, np.ndarray]] = []
        index: list[int] = []
        for parts, idx in iter_outputs(
            self.model, loader, fn, self.meta["device"], self.meta["precision"], len(samples)
        ):
            chunks.append(_rows(self.meta["outputs"], parts, self.grid, args.threshold))
            index += idx.tolist()
        arrays = (
            {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]} if chunks else {}
        )
        done = set(index)
        payload = {
            **arrays,
            "index": np.asarray(index, dtype=np.int64),
            "files": np.asarray([self.rel[i] for i in index], dtype=str),
            "skipped": np.asarray([self.rel[i] for i in indices if i not in done], dtype=str),
            "settings": np.asarray(self.settings),
        }
        path = args.output_dir / shard_name(k)
        for stale in args.output_dir.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)  # left by a killed run
        atomic_write(path, lambda fh: np.savez(fh, **payload))
        return len(index)

    def write_index(self, names: list[str]) -> dict[str, Any]:
        """``OUT/index.json`` from the shards on disk: every file -> shard and row."""
        files, skipped = [], []
        for name in names:
            with np.load(self.args.output_dir / name) as shard:
                files += [
                    {"file": f, "shard": name, "row": r} for r, f in enumerate(shard["files"])
                ]
                skipped += [str(f) for f in shard["skipped"]]
        index = {**json.loads(self.settings), "grid": list(self.grid), "shards": names}
        index.pop("device", None)
        flags = {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.args).items()}
        index.update(flags=flags, files=[{**f, "file": str(f["file"])} for f in files])
        index["skipped"] = skipped
        text = json.dumps(index, indent=2) + "\n"
        atomic_write(self.args.output_dir / INDEX, lambda fh: fh.write(text), mode="w")
        return index


def load_model(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The backbone (any DINO / DINOv2 / DINOv3 file, or a random ``--arch``) and its metadata."""
    if args.checkpoint:
        model, info = load_eval_backbone(args.checkpoint, args.which)
        meta = {"model": str(args.checkpoint), "family": info.family, "arch": info.arch}
        return model, {**meta, "mean": list(info.mean), "std": list(info.std)}
    torch.manual_seed(args.seed)
    model = build_vit(args.arch, args.patch_size).eval()
    meta = {"model": f"random-init seed {args.seed}", "family": "dino", "arch": args.arch}
    return model, {**meta, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "trainer.eval.export",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="any DINO, DINOv2 or DINOv3 file the service loads")
    source.add_argument("--random_init", action="store_true", help="a random --arch/--patch_size")
    p.add_argument("--which", default="teacher", choices=("teacher", "student"))
    p.add_argument("--arch", default="vit_small", choices=tuple(ARCHS), help="with --random_init")
    p.add_argument("--patch_size", type=int, default=16, help="with --random_init")
    p.add_argument("--seed", type=int, default=0, help="with --random_init: torch seed")
    p.add_argument("--images", type=Path, required=True, help="folder of images (any depth)")
    p.add_argument("--output_dir", type=Path, required=True, help="shards and index.json")
    p.add_argument("--outputs", default="cls,patch", help=f"comma list of {','.join(OUTPUTS)}")
    p.add_argument("--image_size", type=int, default=224, help="side of the square input")
    p.add_argument("--threshold", type=float, default=0.6, help="attention mass a mask keeps")
    p.add_argument("--shard_size", type=int, default=256, help="images per shard")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    p.add_argument("--num_workers", type=int, default=0, help="image-loading workers")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_precision_flag(p)
    return p


def _check(args: argparse.Namespace, patch: int) -> tuple[str, ...]:
    for name in ("shard_size", "batch_size"):
        if getattr(args, name) < 1:
            raise ExportError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.image_size < patch:
        raise ExportError(f"--image_size {args.image_size} is smaller than the patch size {patch}")
    if not 0.0 < args.threshold <= 1.0:
        raise ExportError(f"--threshold must be in (0, 1], got {args.threshold}")
    if not args.images.is_dir():
        raise ExportError(f"--images {args.images} is not a folder")
    return parse_outputs(args.outputs)


def _total(count: int) -> int:
    """``count`` summed over the process group (itself in a single process)."""
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([count], dtype=torch.long)
        dist.all_reduce(t)
        return int(t)
    return count


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) one export; rank 0 returns the index with a ``run`` summary."""
    rank, world, device = join_launcher_group(args.device)
    model, meta = load_model(args)
    outputs = _check(args, int(model.patch_size))
    model, precision = frozen_network(model.to(device), args.precision, device)
    flags = {"outputs": list(outputs), "image_size": args.image_size, "threshold": args.threshold}
    meta.update(flags, precision=precision, shard_size=args.shard_size, patch_size=model.patch_size)
    exporter = Exporter(args, model, {**meta, "outputs": outputs})
    exporter.meta["device"] = device
    args.output_dir.mkdir(parents=True, exist_ok=True)
    n_shards = len(shard_ranges(len(exporter.files), args.shard_size))
    # every rank checks every shard already there, so a mismatch stops all of them alike
    done = {k for k in range(n_shards) if exporter.shard_done(args.output_dir / shard_name(k))}
    start, ran, reused = time.perf_counter(), 0, 0
    for k, indices in shard_ranges(len(exporter.files), args.shard_size, rank, world):
        if k in done:
            reused += 1
            continue
        ran += exporter.run_shard(k, indices)
    ran, reused = _total(ran), _total(reused)
    elapsed = max(time.perf_counter() - start, 1e-9)
    index: dict[str, Any] = {}
    if rank == 0:
        index = exporter.write_index([shard_name(k) for k in range(n_shards)])
        index["run"] = {
            "images": ran,
            "shards_reused": reused,
            "seconds": elapsed,
            "images_per_s": ran / elapsed,
            "processes": world,
        }
    leave_group()
    return index


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        index = export(args)
    except (ExportError, FileNotFoundError) as exc:
        sys.stderr.write(f"trainer.eval.export: error: {exc}\n")
        raise SystemExit(2) from exc
    if index:
        run = index["run"]
        line = (
            f"exported {len(index['files'])} images ({run['images']} computed, "
            f"{run['shards_reused']} shards reused) to {args.output_dir} in "
            f"{run['seconds']:.1f} s: {run['images_per_s']:.1f} images/s "
            f"({index['precision']}, {run['processes']} process(es))\n"
        )
        logger.info(line.strip())
        sys.stdout.write(line)
    return index


if __name__ == "__main__":
    main()
