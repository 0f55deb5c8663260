"""Collapse metrics against loop references, and warnings on constructed collapsed outputs."""

import math

import pytest
import torch

from trainer.train.health import collapse_warning, dino_health
from trainer.train.loss import DINOLoss

B, K, NCROPS = 3, 5, 4


def softmax(row, temp):
    m = max(row)
    e = [math.exp((x - m) / temp) for x in row]
    return [x / sum(e) for x in e]


def entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


def test_metrics_match_loop_reference():
    torch.manual_seed(0)
    student, teacher = torch.randn(NCROPS * B, K), torch.randn(2 * B, K)
    center = torch.randn(1, K) * 0.1
    got = dino_health(student, teacher, center, teacher_temp=0.5, student_temp=0.1, ncrops=NCROPS)
    assert all(v.ndim == 0 and v.dtype == torch.float32 for v in got.values())
    c = center.flatten().tolist()
    p_t = [softmax([x - ck for x, ck in zip(row, c, strict=True)], 0.5) for row in teacher.tolist()]
    p_s = [softmax(row, 0.1) for row in student.tolist()]
    mean_p = [sum(col) / len(p_t) for col in zip(*p_t, strict=True)]
    kls = []
    for q in range(2):
        for v in range(NCROPS):
            if v != q:
                kls.append(
                    sum(
                        sum(
                            a * math.log(a / b)
                            for a, b in zip(p_t[q * B + i], p_s[v * B + i], strict=True)
                        )
                        for i in range(B)
                    )
                    / B
                )
    assert got["teacher_entropy"].item() == pytest.approx(
        sum(map(entropy, p_t)) / len(p_t), rel=1e-5
    )
    assert got["teacher_batch_entropy"].item() == pytest.approx(entropy(mean_p), rel=1e-5)
    assert got["kl"].item() == pytest.approx(sum(kls) / len(kls), rel=1e-4)
    assert got["center_norm"].item() == pytest.approx(center.norm().item(), rel=1e-6)


def test_kl_is_loss_minus_teacher_entropy():
    torch.manual_seed(1)
    student, teacher = torch.randn(NCROPS * B, K), torch.randn(2 * B, K)
    loss_fn = DINOLoss(K, NCROPS, 0.04, 0.04, 0, 10)
    metrics = dino_health(student, teacher, loss_fn.center.clone(), 0.04, 0.1, NCROPS)
    loss = loss_fn(student, teacher, 0)
    assert metrics["kl"].item() == pytest.approx(
        loss.item() - metrics["teacher_entropy"].item(), rel=1e-4
    )
    assert metrics["teacher_entropy"].item() <= metrics["teacher_batch_entropy"].item() + 1e-6


def as_floats(metrics):
    return {k: v.item() for k, v in metrics.items()}


def test_one_hot_collapse_warns():
    teacher = torch.zeros(2 * B, K)
    teacher[:, 2] = 10.0  # every image targets dim 2
    metrics = as_floats(
        dino_health(teacher.repeat(2, 1), teacher, torch.zeros(1, K), 0.04, 0.1, NCROPS)
    )
    assert metrics["teacher_batch_entropy"] < 1e-6
    msg = collapse_warning(metrics, K)
    assert msg is not None and "one-hot collapse" in msg and "KL" in msg


def test_uniform_collapse_warns():
    teacher = torch.full((2 * B, K), 0.7)
    metrics = as_floats(
        dino_health(torch.zeros(NCROPS * B, K), teacher, torch.zeros(1, K), 0.04, 0.1, NCROPS)
    )
    assert metrics["teacher_entropy"] == pytest.approx(math.log(K), rel=1e-6)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)
    msg = collapse_warning(metrics, K)
    assert msg is not None and "uniform collapse" in msg


def test_sharp_but_diverse_teacher_is_healthy():
    k = 8
    teacher = torch.zeros(2 * 4, k)
    for row in range(8):
        teacher[row, row % 4] = 1.0  # sharp per image, different dims across images
    metrics = as_floats(
        dino_health(torch.randn(NCROPS * 4, k), teacher, torch.zeros(1, k), 0.04, 0.1, NCROPS)
    )
    assert metrics["teacher_entropy"] < 0.01
    assert metrics["teacher_batch_entropy"] == pytest.approx(math.log(4), rel=1e-3)
    assert collapse_warning(metrics, k) is None


def test_thresholds_and_fallbacks():
    log_k = math.log(100)
    assert (
        collapse_warning(
            {"teacher_entropy": 0.5 * log_k, "teacher_batch_entropy": 0.9 * log_k}, 100
        )
        is None
    )
    assert "one-hot" in collapse_warning({"teacher_entropy": 0.01 * log_k}, 100)
    assert "uniform" in collapse_warning(
        {"teacher_entropy": 0.96 * log_k, "teacher_batch_entropy": log_k}, 100
    )
    with pytest.raises(KeyError, match="teacher_entropy"):
        collapse_warning({"kl": 1.0}, 100)
    with pytest.raises(ValueError, match="out_dim"):
        collapse_warning({"teacher_entropy": 0.0}, 1)


def test_metrics_have_no_host_sync():
    metrics = dino_health(
        torch.randn(NCROPS * B, K, device="meta"),
        torch.randn(2 * B, K, device="meta"),
        torch.zeros(1, K, device="meta"),
        0.04,
        0.1,
        NCROPS,
    )
    assert all(v.device.type == "meta" and v.shape == () for v in metrics.values())
