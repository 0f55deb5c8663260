"""CPU multi-crop throughput: ours against the paper's torchvision pipeline, one thread, same run.

    .venv/bin/python -m benchmarks.augment_throughput --data_path DIR     # photos under DIR
    .venv/bin/python -m benchmarks.augment_throughput --data_path $DINO_DATA_DIR/duts-te-1k.tar.gz
    .venv/bin/python -m benchmarks.augment_throughput                    # generated photos

Both pipelines turn the same encoded images (read into memory first, so disk speed does not
count) into 2 global views of 224 px and 8 local views of 96 px, on one thread, decode
included: the **paper** pipeline is the DINO authors' ``DataAugmentationDINO`` (main_dino.py
and utils.py of facebookresearch/dino), written out below with torchvision transforms and
``Image.open(...).convert("RGB")`` as the decoder; **ours** is
:class:`trainer.data.augment.DataAugmentationDINO` with
:func:`trainer.data.images.load_rgb` (draft decoding of large JPEGs). The two take turns,
``--rounds`` times, and the best round of each is reported. Times are this process's CPU
time (one thread, so it is the op's own cost; other processes on a busy machine count less).

Printed and returned: images/s of both, the speed-up, and a per-op profile (ms per image,
from one more timed pass of each, where every op is timed separately).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tarfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms

from trainer.data.augment import DataAugmentationDINO, OpProfile
from trainer.data.images import IMAGE_SUFFIXES, list_images, load_rgb

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CLOCK = time.process_time  # this process's CPU time: one thread, so a busy machine counts less
PAPER_OPS = ("decode", "crop", "flip", "jitter", "grayscale", "blur", "solarize", "to_tensor")


class Timed:
    """Wraps one transform of the paper pipeline and charges its time to ``op`` in ``seconds``."""

    def __init__(self, op: str, transform: Callable, seconds: dict[str, float] | None) -> None:
        self.op = op
        self.transform = transform
        self.seconds = seconds

    def __call__(self, image: Any) -> Any:
        if self.seconds is None:
            return self.transform(image)
        start = CLOCK()
        out = self.transform(image)
        self.seconds[self.op] += CLOCK() - start
        return out


class PaperGaussianBlur:
    """The authors' ``utils.GaussianBlur``: PIL blur, radius ~ U[0.1, 2], applied with ``p``."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.prob = p
        self.radius_min = radius_min
        self.radius_max = radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.prob:
            return img
        radius = random.uniform(self.radius_min, self.radius_max)
        return img.filter(ImageFilter.GaussianBlur(radius=radius))


class PaperSolarization:
    """The authors' ``utils.Solarization``: ``ImageOps.solarize`` with probability ``p``."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class PaperMultiCrop:
    """The authors' ``DataAugmentationDINO`` (main_dino.py), every op wrapped in :class:`Timed`."""

    def __init__(
        self,
        global_crops_scale: tuple[float, float],
        local_crops_scale: tuple[float, float],
        local_crops_number: int,
        global_size: int = 224,
        local_size: int = 96,
        seconds: dict[str, float] | None = None,
    ) -> None:
        bicubic = transforms.InterpolationMode.BICUBIC
        jitter = transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
        flip_and_color_jitter = [
            Timed("flip", transforms.RandomHorizontalFlip(p=0.5), seconds),
            Timed("jitter", transforms.RandomApply([jitter], p=0.8), seconds),
            Timed("grayscale", transforms.RandomGrayscale(p=0.2), seconds),
        ]
        to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
        normalize = Timed("to_tensor", to_tensor, seconds)

        def crop(size: int, scale: tuple[float, float]) -> Timed:
            resized_crop = transforms.RandomResizedCrop(size, scale=scale, interpolation=bicubic)
            return Timed("crop", resized_crop, seconds)

        self.global_transfo1 = transforms.Compose(
            [
                crop(global_size, global_crops_scale),
                *flip_and_color_jitter,
                Timed("blur", PaperGaussianBlur(1.0), seconds),
                normalize,
            ]
        )
        self.global_transfo2 = transforms.Compose(
            [
                crop(global_size, global_crops_scale),
                *flip_and_color_jitter,
                Timed("blur", PaperGaussianBlur(0.1), seconds),
                Timed("solarize", PaperSolarization(0.2), seconds),
                normalize,
            ]
        )
        self.local_crops_number = local_crops_number
        self.local_transfo = transforms.Compose(
            [
                crop(local_size, local_crops_scale),
                *flip_and_color_jitter,
                Timed("blur", PaperGaussianBlur(p=0.5), seconds),
                normalize,
            ]
        )

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        for _ in range(self.local_crops_number):
            crops.append(self.local_transfo(image))
        return crops


def paper_decode(blob: bytes) -> Image.Image:
    """torchvision's ``pil_loader``, which the authors' ImageFolder uses."""
    img = Image.open(io.BytesIO(blob))
    return img.convert("RGB")


def generated_photos(count: int, size: tuple[int, int], seed: int) -> list[bytes]:
    """Photo-like JPEGs (quality 90): smooth colour regions, edges, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    blobs = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(
            Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC),
            dtype=np.float32,
        )
        yy, xx = np.mgrid[0:height, 0:width]
        stripes = 25 * np.sin(xx / rng.uniform(3, 12) + yy / rng.uniform(5, 20))[..., None]
        noise = rng.normal(0, 8, (height, width, 3))
        image = Image.fromarray(np.clip(base + stripes + noise, 0, 255).astype(np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


def read_photos(source: Path, count: int) -> list[bytes]:
    """The first ``count`` images (sorted by path) of a folder, at any depth, or of a tar archive
    (read in place, nothing extracted), as encoded bytes."""
    if source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            members = sorted(
                (
                    m
                    for m in archive.getmembers()
                    if m.isfile()
                    and Path(m.name).suffix.lower() in IMAGE_SUFFIXES
                    and not Path(m.name).name.startswith(".")
                ),
                key=lambda m: m.name,
            )
            blobs = [archive.extractfile(member).read() for member in members[:count]]
    else:
        blobs = [path.read_bytes() for path in list_images(source, recursive=True)[:count]]
    if not blobs:
        raise SystemExit(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {source}")
    return blobs


def _time_pass(run: Callable[[bytes], object], blobs: Sequence[bytes]) -> float:
    start = CLOCK()
    for blob in blobs:
        run(blob)
    return len(blobs) / (CLOCK() - start)


def _crop_args(args: argparse.Namespace) -> tuple:
    return (
        tuple(args.global_crops_scale),
        tuple(args.local_crops_scale),
        args.local_crops_number,
        args.global_crops_size,
        args.local_crops_size,
    )


def _paper_profile(args: argparse.Namespace, blobs: Sequence[bytes]) -> dict[str, float]:
    seconds: dict[str, float] = defaultdict(float)
    paper = PaperMultiCrop(*_crop_args(args), seconds=seconds)
    decode = Timed("decode", paper_decode, seconds)
    for blob in blobs:
        paper(decode(blob))
    return {op: 1000.0 * seconds[op] / len(blobs) for op in PAPER_OPS}


def _our_profile(ours: DataAugmentationDINO, blobs: Sequence[bytes]) -> dict[str, float]:
    profile = OpProfile(clock=CLOCK)
    ours.profile = profile
    generator = torch.Generator().manual_seed(1)
    for blob in blobs:
        start = CLOCK()
        image = load_rgb(io.BytesIO(blob), ours.draft_size)
        profile.lap("decode", start)
        ours(image, generator)
    ours.profile = None
    per_image = profile.milliseconds(len(blobs))
    jitter_ops = ("brightness", "contrast", "saturation", "hue")
    table = {op: per_image.get(op, 0.0) for op in PAPER_OPS if op != "jitter"}
    table["jitter"] = sum(per_image.get(op, 0.0) for op in jitter_ops)
    table.update({f"jitter.{op}": per_image.get(op, 0.0) for op in jitter_ops})
    return {op: table[op] for op in (*PAPER_OPS, *(f"jitter.{op}" for op in jitter_ops))}


def run_benchmark(args: argparse.Namespace, blobs: Sequence[bytes]) -> dict[str, Any]:
    """Throughput of both pipelines (best of ``args.rounds`` alternating rounds), the profiles."""
    torch.set_num_threads(1)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    paper = PaperMultiCrop(*_crop_args(args))
    ours = DataAugmentationDINO(*_crop_args(args))
    generator = torch.Generator().manual_seed(args.seed)

    def run_paper(blob: bytes) -> object:
        return paper(paper_decode(blob))

    def run_ours(blob: bytes) -> object:
        return ours(load_rgb(io.BytesIO(blob), ours.draft_size), generator)

    rates: dict[str, list[float]] = {"paper": [], "ours": []}
    for _ in range(args.rounds):
        rates["paper"].append(_time_pass(run_paper, blobs))
        rates["ours"].append(_time_pass(run_ours, blobs))
    paper_rate = max(rates["paper"])
    our_rate = max(rates["ours"])
    return {
        "images": len(blobs),
        "views": f"2x{args.global_crops_size} + {args.local_crops_number}x{args.local_crops_size}",
        "threads": torch.get_num_threads(),
        "paper_images_per_s": paper_rate,
        "ours_images_per_s": our_rate,
        "speedup": our_rate / paper_rate,
        "rounds": rates,
        "profile_ms": {"paper": _paper_profile(args, blobs), "ours": _our_profile(ours, blobs)},
    }


def print_report(report: dict[str, Any], source: str) -> None:
    print(
        f"multi-crop {report['views']}, {report['images']} images from {source}, "
        f"{report['threads']} thread, best of {len(report['rounds']['paper'])} rounds"
    )
    print(
        f"  paper (torchvision, authors' DataAugmentationDINO): "
        f"{report['paper_images_per_s']:8.1f} images/s"
    )
    print(
        f"  ours  (trainer.data.augment.DataAugmentationDINO):  "
        f"{report['ours_images_per_s']:8.1f} images/s"
    )
    print(f"  speed-up: {report['speedup']:.2f}x")
    paper = report["profile_ms"]["paper"]
    ours = report["profile_ms"]["ours"]
    print(f"  per-op profile, ms per image (all views):\n  {'op':<20}{'paper':>9}{'ours':>9}")
    for op in ours:
        paper_ms = f"{paper[op]:9.3f}" if op in paper else f"{'':9}"
        print(f"  {op:<20}{paper_ms}{ours[op]:9.3f}")
    print(
        f"  {'total':<20}{sum(paper.values()):9.3f}"
        f"{sum(v for k, v in ours.items() if not k.startswith('jitter.')):9.3f}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data_path",
        type=Path,
        default=None,
        help="photos: a folder (any depth) or a tar archive such as duts-te-1k.tar.gz "
        "(read in place); default: generated photos",
    )
    p.add_argument("--images", type=int, default=200, help="how many images (default 200)")
    p.add_argument(
        "--generated_size",
        type=int,
        nargs=2,
        default=(500, 375),
        metavar=("W", "H"),
        help="size of the generated photos (default 500 375, ImageNet-like)",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per pipeline")
    p.add_argument("--global_crops_scale", type=float, nargs=2, default=(0.4, 1.0))
    p.add_argument("--local_crops_scale", type=float, nargs=2, default=(0.05, 0.4))
    p.add_argument("--local_crops_number", type=int, default=8)
    p.add_argument("--global_crops_size", type=int, default=224)
    p.add_argument("--local_crops_size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.data_path is not None:
        blobs = read_photos(args.data_path, args.images)
        source = str(args.data_path)
    else:
        blobs = generated_photos(args.images, tuple(args.generated_size), args.seed)
        source = f"generated {args.generated_size[0]}x{args.generated_size[1]} photos"
    threads = torch.get_num_threads()
    try:
        report = run_benchmark(args, blobs)
    finally:
        torch.set_num_threads(threads)
    report["source"] = source
    print_report(report, source)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
