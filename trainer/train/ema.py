"""The momentum teacher: creation and the exponential-moving-average update."""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers, in any nesting."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of the (unwrapped) student with every parameter frozen; buffers are copied."""
    teacher = copy.deepcopy(unwrap_model(student))
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def _paired_params(
    teacher: nn.Module, student: nn.Module
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    t_params = dict(unwrap_model(teacher).named_parameters())
    s_params = dict(unwrap_model(student).named_parameters())
    if t_params.keys() != s_params.keys():
        only_t = sorted(t_params.keys() - s_params.keys())[:5]
        only_s = sorted(s_params.keys() - t_params.keys())[:5]
        raise ValueError(
            f"teacher and student parameters differ: only in teacher {only_t}, "
            f"only in student {only_s}"
        )
    names = list(t_params)
    return [t_params[n] for n in names], [s_params[n].detach() for n in names]


@torch.no_grad()
def ema_update(
    teacher: nn.Module, student: nn.Module, momentum: float, finite: torch.Tensor | None = None
) -> None:
    """``teacher = m * teacher + (1 - m) * student`` for every same-named parameter.

    Fused ``torch._foreach`` launches, no host sync. Buffers (e.g. BatchNorm statistics)
    are not averaged, as in the DINO authors' code. ``student`` may be DDP- or
    ``torch.compile``-wrapped. ``finite`` (a 0-d bool tensor) skips the update on the device
    where it is False: the momentum becomes 1, so ``teacher * 1 + student * 0`` leaves the
    teacher exactly as it was (the student's weights are finite: a non-finite step does not
    change them, see :mod:`trainer.train.skip_step`).
    """
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    t_params, s_params = _paired_params(teacher, student)
    if not t_params:
        return
    if finite is None:
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
        return
    keep = torch.where(finite, momentum, 1.0).to(device=t_params[0].device, dtype=torch.float32)
    torch._foreach_mul_(t_params, keep)
    torch._foreach_add_(t_params, torch._foreach_mul(s_params, 1.0 - keep))
