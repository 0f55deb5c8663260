"""An optimizer step that is skipped on the device when the loss is not finite.

The training step never reads the loss back to the host, so it cannot branch on it. Instead
the step is taken and undone where the flag says so, all on the device:

* fused AdamW takes the flag itself (its kernel reads a "found inf" tensor, as under
  ``torch.amp.GradScaler``) and leaves parameters, moments and step counts untouched;
* any other optimizer (AdamW's foreach path, SGD, LARS) has its parameters and state copied
  before the step, into buffers kept for the next steps (as much memory again as parameters
  and state), and put back with ``torch.where`` after it. State that the step creates
  (on the first step) is zeroed where the step is skipped, which is where each of these
  optimizers starts from (SGD's first momentum buffer ``g`` equals ``0.9 * 0 + g``).

Tensors on another device than the flag (the host-side step counters of a non-fused AdamW
on a GPU) are left as the step made them: reading the flag there would be a host sync.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn


def _tensors(optimizer: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    """The parameters that have grads and the tensors of their state, keyed by (param, name)."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    found = {}
    for index, param in enumerate(params):
        found[(index, "")] = param
        for name, value in optimizer.state.get(param, {}).items():
            if isinstance(value, torch.Tensor):
                found[(index, name)] = value
    return found


def grads_finite(model: nn.Module, norms: torch.Tensor | None = None) -> torch.Tensor:
    """0-d bool tensor: every gradient of ``model`` is finite (no host sync).

    ``norms`` are the per-gradient norms when the caller has them (gradient clipping does).
    """
    if norms is None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return torch.ones((), dtype=torch.bool)
        device = grads[0].device
        norms = torch.stack(
            [n.to(device=device, dtype=torch.float32) for n in torch._foreach_norm(grads)]
        )
    return torch.isfinite(norms).all()


def _fused_step(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    optimizer.found_inf = (~finite).float()
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


_SAVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> reused copies


def _save(
    optimizer: torch.optim.Optimizer, tensors: dict[tuple[int, str], torch.Tensor]
) -> dict[tuple[int, str], torch.Tensor]:
    """Copies of ``tensors`` in buffers kept from step to step (no allocation per step)."""
    buffers = _SAVED.setdefault(optimizer, {})
    for key, tensor in tensors.items():
        held = buffers.get(key)
        if held is None or held.shape != tensor.shape or held.dtype != tensor.dtype:
            buffers[key] = torch.empty_like(tensor)
    if tensors:
        torch._foreach_copy_([buffers[key] for key in tensors], list(tensors.values()))
    return {key: buffers[key] for key in tensors}


@torch.no_grad()
def skip_nonfinite_step(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """``optimizer.step()``, with no effect where the 0-d bool ``finite`` is False (no sync)."""
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        _fused_step(optimizer, finite)
        return
    before = {k: t for k, t in _tensors(optimizer).items() if t.device == finite.device}
    saved = _save(optimizer, before)
    optimizer.step()
    for key, tensor in _tensors(optimizer).items():
        if tensor.device != finite.device:
            continue
        old = saved.get(key)
        if old is None:  # created by this step: back to where the optimizer starts
            old = torch.zeros_like(tensor)
        torch.where(finite, tensor, old, out=tensor)
