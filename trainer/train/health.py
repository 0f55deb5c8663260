"""Collapse monitoring for DINO: entropies of the teacher's targets and the teacher-student KL.

The DINO paper (Sec. 5.3, Fig. 7) names two collapse modes, both visible in the teacher's
centred and sharpened distribution ``P_t = softmax((g_t - c) / tau_t)`` over ``K`` dims:

* **one-hot (dominant dimension)**: every image puts its mass on the same dimension, so the
  entropy of the *batch-mean* teacher distribution drops to ~0 (and with it the per-image
  entropy, which can never exceed it);
* **uniform**: every image's distribution is close to uniform, so the *per-image* teacher
  entropy approaches ``log K``.

In both, ``KL(P_t || P_s)`` falls towards 0: the student matches a target that carries no
information. A sharp but diverse teacher (low per-image, high batch-mean entropy) is healthy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.train.loss import N_TEACHER_VIEWS

# Thresholds, as fractions of the maximum entropy log K.
ONE_HOT_FRACTION = 0.05  # batch-mean teacher entropy below 5% of log K -> one-hot collapse
UNIFORM_FRACTION = 0.95  # per-image teacher entropy above 95% of log K -> uniform collapse


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) along the last dim, with 0 log 0 = 0."""
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(dim=-1)


@torch.no_grad()
def dino_health(
    student_output: torch.Tensor,
    teacher_output: torch.Tensor,
    center: torch.Tensor,
    teacher_temp: float,
    student_temp: float,
    ncrops: int,
) -> dict[str, torch.Tensor]:
    """0-d float32 tensors (no host sync) describing the teacher targets of one step.

    * ``teacher_entropy``: mean over teacher rows of ``H(P_t)``;
    * ``teacher_batch_entropy``: ``H(mean over teacher rows of P_t)``;
    * ``kl``: mean over the cross-view pairs ``(q, v), v != q`` (as in the loss) of the
      batch-mean ``KL(P_t^q || P_s^v)``, ``P_s = softmax(g_s / tau_s)``;
    * ``center_norm``: L2 norm of the centre ``c``.

    Pass the centre the loss used for this step for ``kl``/entropies to match the loss exactly.
    """
    teacher_logp = F.log_softmax((teacher_output.float() - center.float()) / teacher_temp, dim=-1)
    teacher_p = teacher_logp.exp()
    student_logp = F.log_softmax(student_output.float() / student_temp, dim=-1).chunk(ncrops)
    kl_terms = []
    teacher_views = zip(
        teacher_p.chunk(N_TEACHER_VIEWS), teacher_logp.chunk(N_TEACHER_VIEWS), strict=True
    )
    for iq, (p, logp) in enumerate(teacher_views):
        for v, student_view in enumerate(student_logp):
            if v != iq:
                kl_terms.append((p * (logp - student_view)).sum(dim=-1).mean())
    return {
        "teacher_entropy": _entropy(teacher_p).mean(),
        "teacher_batch_entropy": _entropy(teacher_p.mean(dim=0)),
        "kl": torch.stack(kl_terms).mean(),
        "center_norm": center.float().norm(),
    }


def collapse_warning(metrics: dict[str, float], out_dim: int) -> str | None:
    """A readable warning if ``metrics`` (from :func:`dino_health`, as floats) show collapse.

    One-hot collapse: ``teacher_batch_entropy < ONE_HOT_FRACTION * log K`` (falls back to
    ``teacher_entropy`` if the batch entropy is absent). Uniform collapse:
    ``teacher_entropy > UNIFORM_FRACTION * log K``. Returns None when neither holds.
    """
    if out_dim < 2:
        raise ValueError(f"out_dim must be >= 2 to measure collapse, got {out_dim}")
    max_entropy = math.log(out_dim)
    per_image = metrics.get("teacher_entropy")
    batch_mean = metrics.get("teacher_batch_entropy", per_image)
    if per_image is None and batch_mean is None:
        raise KeyError(
            "metrics need 'teacher_entropy' and/or 'teacher_batch_entropy' (see dino_health)"
        )
    kl_note = f"; KL(teacher||student) = {metrics['kl']:.4f}" if "kl" in metrics else ""
    if batch_mean is not None and batch_mean < ONE_HOT_FRACTION * max_entropy:
        return (
            f"possible one-hot collapse: the batch-mean teacher entropy is {batch_mean:.4f} "
            f"nats, below {ONE_HOT_FRACTION:.0%} of log K = {max_entropy:.3f} (every image "
            f"targets the same dimension){kl_note}. Try a lower center_momentum (faster "
            "centring) or a higher teacher_temp."
        )
    if per_image is not None and per_image > UNIFORM_FRACTION * max_entropy:
        return (
            f"possible uniform collapse: the per-image teacher entropy is {per_image:.4f} "
            f"nats, above {UNIFORM_FRACTION:.0%} of log K = {max_entropy:.3f} (teacher targets "
            f"are near uniform){kl_note}. Try a lower teacher_temp (stronger sharpening)."
        )
    return None
