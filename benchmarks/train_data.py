"""Data for the training-throughput benchmark: in-memory synthetic JPEGs or an image folder.

The datasets read images as the trainer's do; the batches are collated by the trainer's
collates (``trainer.data.jpeg_batch.collate_bytes``, ``trainer.data.dataset.collate_skip_none``).
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from trainer.data.augment import DataAugmentationDINO
from trainer.data.dataset import Batch, SafeImageDataset, collate_skip_none
from trainer.data.images import load_rgb, scan_image_folder
from trainer.data.jpeg_batch import EncodedImageFolder, collate_bytes, decode_with_pil
from trainer.train.build import crop_arguments
from trainer.train.flags import TrainConfig

SYNTHETIC_SIZE = (500, 375)  # about the mean ImageNet image


def synthetic_jpegs(
    count: int, size: tuple[int, int] = SYNTHETIC_SIZE, seed: int = 0
) -> list[bytes]:
    """Photo-like JPEGs (smooth colour fields plus grain) encoded in memory at quality 90."""
    rng = np.random.default_rng(seed)
    width, height = size
    blobs = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        grain = rng.integers(-12, 13, size=(height, width, 3), dtype=np.int16)
        pixels = np.clip(np.asarray(smooth, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    return blobs


class BlobImages:
    """``key -> PIL image`` over in-memory encoded images (a picklable SafeImageDataset loader),
    decoded as the trainer's default loader decodes files (``load_rgb``, draft mode)."""

    def __init__(self, blobs: list[bytes], draft_size: int | None = None) -> None:
        self.blobs = blobs
        self.draft_size = draft_size

    def __call__(self, key: int) -> Image.Image:
        return load_rgb(io.BytesIO(self.blobs[key]), self.draft_size)


class EncodedImages(Dataset):
    """``(encoded bytes, index)`` from memory, as ``EncodedImageFolder`` gives them from files."""

    def __init__(self, blobs: list[bytes]) -> None:
        self.blobs = blobs

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> tuple[bytes, int]:
        return self.blobs[index], index


class DecodeInWorkers:
    """The trainer's bytes collate, then PIL decoding (draft mode) in the loader worker."""

    def __init__(self, draft_size: int) -> None:
        self.draft_size = draft_size

    def __call__(self, items: list[tuple[bytes, int]]) -> Batch:
        batch = collate_bytes(items)
        images = [decode_with_pil(blob, self.draft_size) for blob in batch.images]
        return Batch(images, batch.labels, batch.skipped)


def build_dataset(
    args: argparse.Namespace, gpu_augment: bool, decode_on_device: bool, cfg: TrainConfig
) -> tuple[Dataset, Callable]:
    """(dataset, collate): encoded bytes for the GPU multi-crop, PIL multi-crop otherwise."""
    blobs = None
    samples = None
    if args.synthetic:
        blobs = synthetic_jpegs(args.synthetic_images, tuple(args.synthetic_size), args.seed)
    else:
        samples = scan_image_folder(args.data_path)[0]
    if gpu_augment:
        dataset = EncodedImages(blobs) if blobs is not None else EncodedImageFolder(samples)
        collate = collate_bytes if decode_on_device else DecodeInWorkers(cfg.global_crops_size)
        return dataset, collate
    augment = DataAugmentationDINO(*crop_arguments(cfg))
    if blobs is not None:
        keys = [(i, 0) for i in range(len(blobs))]
        return SafeImageDataset(
            keys, augment, loader=BlobImages(blobs, augment.draft_size)
        ), collate_skip_none
    return SafeImageDataset(samples, augment), collate_skip_none
