"""The frozen-backbone runner: move a model in eval mode over a dataset, batch by batch, in order.

It gives the evaluation commands one way to do what they all do: batched loading in dataset
order (no shuffling, so outputs line up with the files), the requested precision (autocast for
bf16 / fp16; fp32 and int8, whose network is already quantised, run plain), no gradients, a
progress bar in images per second and, under ``torchrun``, sharding across the processes with
the rows gathered back in dataset order (:mod:`trainer.eval.shards`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from trainer.data.dataset import Batch, make_loader
from trainer.eval.shards import StridedSampler, gather_in_order, rank_world
from trainer.model.device import autocast_context
from trainer.model.inference_precision import UnsupportedPrecision, precision_network

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
logger = logging.getLogger(__name__)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16`` / ``fp16``; nothing for ``fp32`` and ``int8``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return contextlib.nullcontext() if precision == "int8" else autocast_context(device, precision)


def frozen_network(model: nn.Module, requested: str, device: torch.device) -> tuple[nn.Module, str]:
    """``(network, precision)`` for ``--precision requested`` (auto resolved): the model, or its
    int8 copy. A mode this machine would only emulate exits with ``--precision: why``."""
    try:
        network, precision, _ = precision_network(model, requested, device)
    except UnsupportedPrecision as exc:
        raise SystemExit(f"--precision: {exc}") from exc
    logger.info("precision %s", precision)
    return network, precision


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, Batch):
        return batch.images, batch.labels
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch, None


def _as_float(out: Any) -> Any:
    """A tensor (or a tuple of tensors) as float32; boolean tensors stay boolean."""
    if isinstance(out, tuple):
        return tuple(_as_float(o) for o in out)
    return out if out.dtype == torch.bool else out.float()


def iter_outputs(
    model: nn.Module,
    batches: Iterable[Any],
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    device: torch.device,
    precision: str = "fp32",
    total: int | None = None,
    desc: str = "features",
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(fn(model, images) as float32, labels)`` per non-empty batch, in loader order, without
    gradients (``fn`` may return a tuple of tensors); a progress bar counts images (``total``
    of them when known) and reports img/s."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, mininterval=2.0)
    start, seen = time.perf_counter(), 0
    try:
        for batch in batches:
            images, labels = _unpack(batch)
            if len(images) == 0:
                continue
            with torch.no_grad(), autocast(device, precision):
                out = fn(model, images.to(device, non_blocking=True))
            seen += len(images)
            bar.update(len(images))
            yield _as_float(out), labels
    finally:
        bar.close()
        if isinstance(model, nn.Module):
            model.train(was_training)
    elapsed = max(time.perf_counter() - start, 1e-9)
    logger.info("%s: %d images in %.1f s (%.1f img/s)", desc, seen, elapsed, seen / elapsed)


def collect(
    model: nn.Module,
    batches: Iterable[Any],
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    device: torch.device,
    precision: str = "fp32",
    total: int | None = None,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """All outputs (CPU) and labels of :func:`iter_outputs`, concatenated in order."""
    outs, labels = [], []
    for out, lab in iter_outputs(model, batches, fn, device, precision, total, desc):
        outs.append(out.cpu())
        if lab is not None:
            labels.append(lab.cpu())
    if not outs:
        raise ValueError("no readable images to run the backbone on")
    return torch.cat(outs), torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)


class _Indexed(torch.utils.data.Dataset):
    """``(item[0], index)`` of a dataset whose items are ``(tensor, ...)`` or None (unreadable)."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        item = self.dataset[index]
        return None if item is None else (item[0], index)


def collect_dataset(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "features",
    distributed: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs, dataset indices)`` of every readable item, in dataset order.

    Items are ``(image tensor, ...)`` or None for an unreadable file (dropped). With
    ``distributed`` and a joined process group, each rank runs its strided share and every rank
    receives all rows (:func:`~trainer.eval.shards.gather_in_order`)."""
    rank, world = rank_world() if distributed else (0, 1)
    sampler = StridedSampler(len(dataset), rank, world)  # type: ignore[arg-type]
    pin = device.type == "cuda"
    loader = make_loader(_Indexed(dataset), batch_size, sampler, num_workers, pin, False)
    outs, idx = [], []
    for out, index in iter_outputs(model, loader, fn, device, precision, len(sampler), desc):
        outs.append(out.cpu())
        idx.append(index.cpu())
    rows = torch.cat(outs) if outs else torch.empty(0)
    indices = torch.cat(idx) if idx else torch.empty(0, dtype=torch.long)
    if world > 1:
        rows, indices = gather_in_order(rows, indices)
    if len(indices) == 0:
        raise ValueError("no readable images to run the backbone on")
    return rows, indices
