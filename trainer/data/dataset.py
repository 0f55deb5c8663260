"""Training and evaluation images: folder scanning, corrupt-file tolerance, samplers and loaders.

A data folder is either an ImageFolder tree (``root/<class>/**/*.jpg``, labels from sorted
class names) or a plain folder of images (every image gets label 0). A file that cannot be
decoded is skipped, never fatal: the dataset returns ``None`` for it, the collate function
drops it and counts it, and the count travels with the batch, so it adds up correctly
across loader workers; the trainer sums it over ranks and logs it once per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from trainer.data.images import DECODE_ERRORS, load_rgb

logger = logging.getLogger(__name__)


def sample_seed(base_seed: int, epoch: int, index: int) -> int:
    """A seed that depends only on (run seed, epoch, sample index), never on worker or resume."""
    return ((base_seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


class SafeImageDataset(Dataset):
    """``(transform(image), label)`` per file, or ``None`` when the file cannot be read.

    With ``seed`` set, indices are ``(epoch, index)`` pairs (see :class:`EpochIndexSampler`)
    and the transform is called with a ``generator`` seeded from ``(seed, epoch, index)``, so
    crops do not depend on worker count or on where a run was resumed.

    The default ``loader`` is :func:`~trainer.data.images.load_rgb`; when the transform has a
    ``draft_size`` (the CPU multi-crop has), large JPEGs are decoded at reduced size down to it.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        transform: Callable[[Image.Image], Any],
        loader: Callable[[Path], Image.Image] | None = None,
        seed: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        draft_size = getattr(transform, "draft_size", None)
        self.loader = loader if loader is not None else partial(load_rgb, draft_size=draft_size)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int] | None:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        path, label = self.samples[index]
        try:
            image = self.loader(path)
        except DECODE_ERRORS as exc:
            logger.warning("skipping unreadable image %s: %s", path, exc)
            return None
        if self.seed is None:
            return self.transform(image), label
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        return self.transform(image, generator=generator), label


@dataclass
class Batch:
    """Collated images (a tensor, or a list of per-crop tensors), labels, and skipped files."""

    images: Any
    labels: torch.Tensor
    skipped: int

    def __len__(self) -> int:
        return int(self.labels.numel())

    def pin_memory(self) -> Batch:
        """For DataLoader(pin_memory=True); raw bytes (decoded on the device) stay as they are."""
        if isinstance(self.images, torch.Tensor):
            images: Any = self.images.pin_memory()
        else:
            images = [t.pin_memory() if isinstance(t, torch.Tensor) else t for t in self.images]
        return Batch(images, self.labels.pin_memory(), self.skipped)


def collate_skip_none(items: list[tuple[Any, int] | None]) -> Batch:
    """Drop unreadable items, count them, stack the rest (multi-crop lists crop-wise)."""
    good = [it for it in items if it is not None]
    skipped = len(items) - len(good)
    if not good:
        return Batch([], torch.empty(0, dtype=torch.long), skipped)
    images = [it[0] for it in good]
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    if isinstance(images[0], (list, tuple)):
        stacked: Any = [torch.stack([crops[i] for crops in images]) for i in range(len(images[0]))]
    else:
        stacked = torch.stack(images)
    return Batch(stacked, labels, skipped)


def make_sampler(
    dataset: Dataset,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> DistributedSampler:
    """A DistributedSampler in every case (one process too): order depends only on seed+epoch."""
    return DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )


class EpochIndexSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)``: per-sample seeds reach the dataset, even in persistent workers."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler: torch.utils.data.Sampler | None,
    num_workers: int,
    pin_memory: bool,
    drop_last: bool,
    collate_fn: Callable = collate_skip_none,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """DataLoader with persistent workers and prefetching when ``num_workers > 0``."""
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": 4}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,
        generator=generator,
        **extra,
    )
