"""The frozen-backbone runner: move a model in eval mode over a dataset, batch by batch, in order.

It gives the evaluation commands one way to do what they all do: batched loading in dataset
order (no shuffling, so outputs line up with the files), the requested precision (autocast for
bf16 / fp16, plain fp32 otherwise), no gradients, and a progress bar in images per second.
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

from trainer.data.dataset import Batch
from trainer.model.device import autocast_context

PRECISIONS = ("fp32", "bf16", "fp16")
logger = logging.getLogger(__name__)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``bf16`` / ``fp16``; nothing for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return autocast_context(device, precision)


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, Batch):
        return batch.images, batch.labels
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch, None


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
    gradients; a progress bar counts images (``total`` of them when known) and reports img/s."""
    was_training = model.training
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
            yield out.float(), labels
    finally:
        bar.close()
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
