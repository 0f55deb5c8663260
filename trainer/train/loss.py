"""The DINO self-distillation loss with teacher centring and sharpening.

For teacher views ``q`` (the 2 global crops) and student views ``v`` (all crops), ``v != q``::

    P_t = softmax((g_t - c) / tau_t)          (no gradient)
    log P_s = log_softmax(g_s / tau_s)
    loss = mean_{(q, v), v != q} mean_batch sum_k -P_t[k] * log P_s[k]

then the centre ``c`` follows an EMA of the teacher's batch-mean output (all-reduced over
ranks). Identical arithmetic to the authors' ``main_dino.py`` so loss values are comparable.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainer.train.schedules import teacher_temp_schedule

N_TEACHER_VIEWS = 2


def _distributed_world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student, over view pairs."""

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if ncrops < N_TEACHER_VIEWS:
            raise ValueError(
                f"ncrops must be >= {N_TEACHER_VIEWS} (the global crops), got {ncrops}"
            )
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.ncrops = ncrops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.set_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs)
        self.last_teacher_temp = float(self.teacher_temps[0])

    def set_schedule(
        self,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: int,
        nepochs: int,
    ) -> None:
        """(Re)build the per-epoch teacher temperatures: a linear warm-up, then constant.

        Called by the constructor, and again when a run's length changes (the time budget);
        the centre and the other state are kept.
        """
        self.teacher_temps = teacher_temp_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs
        )

    def teacher_temp_at(self, epoch: int) -> float:
        """Teacher temperature for ``epoch`` (epochs past the schedule keep its last value)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return float(self.teacher_temps[min(int(epoch), len(self.teacher_temps) - 1)])

    def _check_shapes(self, student_output: torch.Tensor, teacher_output: torch.Tensor) -> None:
        rows = teacher_output.shape[0]
        if rows % N_TEACHER_VIEWS or teacher_output.shape[-1] != self.out_dim:
            raise ValueError(
                f"teacher_output must be ({N_TEACHER_VIEWS}*B, {self.out_dim}), "
                f"got {tuple(teacher_output.shape)}"
            )
        batch = rows // N_TEACHER_VIEWS
        if tuple(student_output.shape) != (self.ncrops * batch, self.out_dim):
            raise ValueError(
                f"student_output must be (ncrops*B, out_dim) = "
                f"({self.ncrops * batch}, {self.out_dim}), "
                f"got {tuple(student_output.shape)}"
            )

    def forward(
        self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        """Mean cross-view cross-entropy (float32 scalar); also updates the centre."""
        self._check_shapes(student_output, teacher_output)
        temp = self.teacher_temp_at(epoch)
        self.last_teacher_temp = temp
        student_logp = F.log_softmax(student_output.float() / self.student_temp, dim=-1)
        student_logp = student_logp.chunk(self.ncrops)
        with torch.no_grad():
            teacher_p = F.softmax((teacher_output.detach().float() - self.center) / temp, dim=-1)
        teacher_views = teacher_p.chunk(N_TEACHER_VIEWS)
        total = student_output.new_zeros((), dtype=torch.float32)
        n_terms = 0
        for iq, q in enumerate(teacher_views):
            for v, logp in enumerate(student_logp):
                if v == iq:
                    continue  # a view is never compared with itself
                total = total + torch.sum(-q * logp, dim=-1).mean()
                n_terms += 1
        self.update_center(teacher_output)
        return total / n_terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """``c <- m c + (1 - m) * mean of teacher rows over all ranks`` (in float32)."""
        batch_center = teacher_output.detach().float().sum(dim=0, keepdim=True)
        world_size = _distributed_world_size()
        if world_size > 1:
            dist.all_reduce(batch_center, op=dist.ReduceOp.SUM)
        batch_center = batch_center / (teacher_output.shape[0] * world_size)
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))
