"""Optimiser construction, parameter groups, LARS, and DINO's per-parameter gradient tools.

The run loop owns the schedules: every iteration it writes ``group["lr"]`` into every group
and ``group["weight_decay"]`` into group 0 only (group 1 holds the never-decayed params).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd", "lars")
SGD_MOMENTUM = 0.9


def get_params_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights with decay, then biases and every <=1-D param with ``weight_decay=0``.

    Frozen params (``requires_grad=False``) are left out of both groups.
    """
    regularized: list[nn.Parameter] = []
    not_regularized: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.ndim <= 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg, 2017), in DINO's variant.

    For a matrix/tensor parameter ``w`` (``ndim > 1``) with gradient ``g``::

        u = g + wd * w
        u = u * (eta * ||w|| / ||u||)      (factor 1 when ||w|| or ||u|| is 0)

    Biases and other ``ndim <= 1`` params use ``u = g`` (no decay, no trust ratio). Then
    heavy-ball momentum ``mu = momentum * mu + u`` and ``w = w - lr * mu``. The trust-ratio
    arithmetic stays on the device (``torch.where``), so a step has no host sync.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = SGD_MOMENTUM,
        eta: float = 0.001,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(
                f"invalid LARS settings: lr={lr}, weight_decay={weight_decay}, "
                f"momentum={momentum} (must be in [0, 1)), eta={eta} (must be > 0)"
            )
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @staticmethod
    def _adapt(
        params: list[torch.Tensor], updates: list[torch.Tensor], weight_decay: float, eta: float
    ) -> list[torch.Tensor]:
        if weight_decay != 0:
            updates = torch._foreach_add(updates, params, alpha=weight_decay)
        w_norm = torch.stack(torch._foreach_norm(params))
        u_norm = torch.stack(torch._foreach_norm(updates))
        ones = torch.ones_like(w_norm)
        trust = torch.where((w_norm > 0) & (u_norm > 0), eta * w_norm / u_norm, ones)
        return torch._foreach_mul(updates, list(trust.to(updates[0].dtype).unbind()))

    def _momentum_buffers(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        bufs = []
        for p in params:
            state = self.state[p]
            if "mu" not in state:
                state["mu"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["mu"])
        return bufs

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch.optim signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for adapted in (True, False):
                subset = [p for p in params if (p.ndim > 1) == adapted]
                if not subset:
                    continue
                updates = [p.grad for p in subset]
                if adapted:
                    updates = self._adapt(subset, updates, group["weight_decay"], group["eta"])
                bufs = self._momentum_buffers(subset)
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, updates)
                torch._foreach_add_(subset, bufs, alpha=-group["lr"])
        return loss


FUSED_ADAMW_DEVICES = ("cuda", "cpu")


def _fused_adamw_device(param_groups: list[dict]) -> bool:
    """Whether every param sits on one device type that has a fused AdamW kernel."""
    kinds = {p.device.type for g in param_groups for p in g["params"]}
    return len(kinds) == 1 and kinds <= set(FUSED_ADAMW_DEVICES)


def build_optimizer(
    name: str, param_groups: list[dict], lr: float = 0.0, fused: bool = False
) -> torch.optim.Optimizer:
    """``adamw`` (torch AdamW), ``sgd`` (momentum 0.9) or ``lars`` (:class:`LARS`).

    ``fused=True`` asks for AdamW's fused kernel (CUDA or CPU); it is used only when every
    param is on one such device (otherwise a warning is logged and torch's default foreach
    path is used). The fused kernel also skips a non-finite step without a host sync
    (:mod:`trainer.train.skip_step`).
    """
    key = name.lower()
    if key == "adamw":
        if fused and _fused_adamw_device(param_groups):
            return torch.optim.AdamW(param_groups, lr=lr, fused=True)
        if fused:
            logger.warning(
                "fused AdamW needs every parameter on one %s device; using the "
                "foreach implementation",
                " or ".join(FUSED_ADAMW_DEVICES),
            )
        return torch.optim.AdamW(param_groups, lr=lr)
    if key == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=SGD_MOMENTUM)
    if key == "lars":
        return LARS(param_groups, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> torch.Tensor:
    """Clip each parameter's gradient separately to L2 norm ``clip`` (DINO's rule).

    For every grad: ``g *= clip / (||g|| + 1e-6)`` when that factor is below 1. Uses
    ``torch._foreach`` ops, no host sync. Returns the pre-clipping norms, one per grad,
    as a float32 tensor (empty when no parameter has a grad).
    """
    if clip <= 0:
        raise ValueError(f"clip must be > 0 (use no clipping instead of clip={clip})")
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch._foreach_norm(grads)
    device = grads[0].device
    norms_f32 = torch.stack([n.to(device=device, dtype=torch.float32) for n in norms])
    factors = (clip / (norms_f32 + 1e-6)).clamp_(max=1.0)
    per_grad = list(factors.unbind())  # a 0-d float32 factor scales a grad of any float dtype
    if any(g.device != device for g in grads):
        per_grad = [f.to(g.device) for f, g in zip(per_grad, grads, strict=True)]
    torch._foreach_mul_(grads, per_grad)
    return norms_f32


def cancel_gradients_last_layer(epoch: int, model: nn.Module, freeze_last_layer: int) -> None:
    """Drop the grads of the head's ``last_layer`` during the first ``freeze_last_layer`` epochs."""
    if epoch >= freeze_last_layer:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
