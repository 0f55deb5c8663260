"""What a checkpoint file may claim, checked before anything is allocated from it.

A torch archive stores each tensor as a view (shape, stride, offset) of a storage saved in the
file. A crafted file can declare a 2048 x 2048 tensor over a 4-byte storage (stride 0): reading
it costs nothing, but every later copy (``.float()``, a layout conversion, the model built for
it) allocates the full claimed size. :func:`check_tensor_claims` refuses any tensor that claims
more bytes than its storage in the file holds; :func:`check_param_claim` bounds the parameter
count a backbone may claim by ``DINO_MAX_PARAMS`` (every family, before a model is built).
:func:`parse_normalisation` validates a file's ``mean`` / ``std`` metadata: three finite
numbers, std above zero (a zero std would turn every map into NaN).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import torch

from trainer.model.backbone_info import CheckpointError
from trainer.model.dinov3 import max_params

_MAX_DEPTH = 3  # training checkpoints nest tensors as {"teacher": {...}} or {"model": {...}}


def _tensors(obj: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict) and depth <= _MAX_DEPTH:
        for key, value in obj.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key), depth + 1)


def check_tensor_claims(obj: Any, name: str, file_size: int | None = None) -> None:
    """Refuse a file whose tensors claim more bytes than their stored data (stride-0 or
    overlapping views of a small storage) or than the file itself holds.

    Meta tensors (shapes without data) allocate nothing when read; the parameter bound
    (:func:`check_param_claim`) still applies to them before a model is built."""
    for key, tensor in _tensors(obj):
        if tensor.numel() == 0 or tensor.is_meta:
            continue
        need = tensor.numel() * tensor.element_size()
        storage = tensor.untyped_storage().nbytes()
        have = storage - tensor.storage_offset() * tensor.element_size()
        too_big = file_size is not None and need > file_size
        if need > have or too_big:
            held = min(have, file_size) if file_size is not None else have
            raise CheckpointError(
                f"{name}: tensor {key} claims shape {tuple(tensor.shape)} ({need:,} bytes) but "
                f"the file stores {max(held, 0):,} bytes for it; the file is corrupt or crafted"
            )


def check_param_claim(state: dict[str, torch.Tensor], name: str) -> int:
    """The parameter count of a backbone state; :class:`CheckpointError` over DINO_MAX_PARAMS."""
    count = sum(int(t.numel()) for t in state.values())
    limit = max_params()
    if count > limit:
        raise CheckpointError(
            f"{name} claims {count:,} parameters ({count / 1e9:.2f}e9), over the "
            f"DINO_MAX_PARAMS limit of {limit:.3g}; it is not loaded (raise DINO_MAX_PARAMS on "
            "a machine with the memory for it)"
        )
    return count


def _three_numbers(text: str, what: str) -> tuple[float, float, float]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"metadata {what} is not JSON: {text[:40]!r}") from exc
    ok = (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        and all(math.isfinite(v) for v in value)
    )
    if not ok:
        raise CheckpointError(
            f"metadata {what} must be a list of 3 finite numbers (R, G, B), got {text[:60]!r}"
        )
    return (float(value[0]), float(value[1]), float(value[2]))


def parse_normalisation(meta: dict[str, str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` from safetensors metadata; :class:`CheckpointError` when either is not
    three finite numbers or a std is not above zero. Both must be given together."""
    if not meta.get("mean") or not meta.get("std"):
        raise CheckpointError("metadata must give both mean and std, or neither")
    mean = _three_numbers(meta["mean"], "mean")
    std = _three_numbers(meta["std"], "std")
    if min(std) <= 0:
        raise CheckpointError(f"metadata std must be above zero per channel, got {list(std)}")
    return mean, std
