"""Per-row helpers of the batched GPU augmentation: uniform draws, coin flips, row selection.

Each row of a batch is one sample of one view with its own random parameters; these helpers
broadcast a per-row value over the rest of a tensor and never synchronise with the host.
"""

from __future__ import annotations

import torch


def uniform(
    shape: tuple[int, ...],
    low: float,
    high: float,
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Float32 draws from U[low, high) of ``shape``."""
    return low + (high - low) * torch.rand(shape, device=device, generator=generator)


def coins(probabilities: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One bool per entry, true with that entry's probability."""
    return (
        torch.rand(probabilities.shape, device=probabilities.device, generator=generator)
        < probabilities
    )


def per_row(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``values`` (N,) viewed as (N, 1, ...) to broadcast over the rows of ``x``."""
    return values.view(-1, *([1] * (x.dim() - 1)))


def select(mask: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Row r of ``new`` where ``mask[r]``, else row r of ``old``."""
    return torch.where(per_row(new, mask), new, old)
