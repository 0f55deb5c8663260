"""Per-iteration and per-epoch schedules used by DINO training.

Conventions follow the DINO authors so that runs are comparable:

* :func:`cosine_scheduler` returns one value per iteration: a linear warm-up (both ends
  included, as ``np.linspace``) followed by a half-cosine from ``base_value`` down (or up)
  to ``final_value``; used for the learning rate, the weight decay and the teacher momentum.
* :func:`teacher_temp_schedule` returns one value per epoch: a linear warm-up of the
  teacher temperature over ``warmup_epochs`` epochs (both ends included), then constant.
* :func:`scaled_lr` is the linear scaling rule ``lr * total_batch / 256``.
"""

from __future__ import annotations

import numpy as np


def _check_count(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def cosine_scheduler(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """Linear warm-up then cosine schedule, one value per iteration (``epochs * niter_per_ep``).

    Warm-up: ``warmup_epochs * niter_per_ep`` values from ``start_warmup_value`` to
    ``base_value`` inclusive. Then, for ``i = 0 .. L-1`` with ``L`` the remaining iterations,
    ``final + 0.5 * (base - final) * (1 + cos(pi * i / L))``.
    """
    _check_count("epochs", epochs, 1)
    _check_count("niter_per_ep", niter_per_ep, 1)
    _check_count("warmup_epochs", warmup_epochs, 0)
    if warmup_epochs > epochs:
        raise ValueError(
            f"warmup_epochs ({warmup_epochs}) is longer than training "
            f"(epochs={epochs}); choose warmup_epochs between 0 and {epochs}"
        )
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    steps = np.arange(epochs * niter_per_ep - warmup_iters)
    phase = np.pi * steps / max(len(steps), 1)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(phase))
    schedule = np.concatenate((warmup, cosine)).astype(np.float64)
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def scaled_lr(lr: float, batch_size_per_gpu: int, world_size: int) -> float:
    """Linear scaling rule: the base ``lr`` is given for a total batch of 256 images."""
    _check_count("batch_size_per_gpu", batch_size_per_gpu, 1)
    _check_count("world_size", world_size, 1)
    return lr * batch_size_per_gpu * world_size / 256.0


def teacher_temp_schedule(
    warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int, nepochs: int
) -> np.ndarray:
    """Teacher temperature per epoch: ``linspace(warmup, final, warmup_epochs)`` then constant.

    The last warm-up epoch already uses ``teacher_temp`` (``np.linspace`` includes its end),
    exactly as in the authors' code. Length is ``nepochs``.
    """
    _check_count("nepochs", nepochs, 1)
    _check_count("warmup_epochs", warmup_epochs, 0)
    if warmup_epochs > nepochs:
        raise ValueError(
            f"warmup_teacher_temp_epochs ({warmup_epochs}) is longer than training "
            f"(epochs={nepochs}); choose a value between 0 and {nepochs}"
        )
    if warmup_teacher_temp <= 0 or teacher_temp <= 0:
        raise ValueError(
            f"teacher temperatures must be > 0, got "
            f"warmup_teacher_temp={warmup_teacher_temp}, teacher_temp={teacher_temp}"
        )
    warmup = np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs)
    constant = np.full(nepochs - warmup_epochs, teacher_temp, dtype=np.float64)
    return np.concatenate((warmup, constant))
