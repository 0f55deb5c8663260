"""Momentum teacher: creation and the EMA arithmetic."""

import pytest
import torch
from torch import nn

from trainer.train.ema import ema_update, make_teacher, unwrap_model


def student_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_make_teacher_is_frozen_deep_copy():
    student = student_net()
    student.train()(torch.randn(8, 3))  # move the BN running stats away from init
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (n, t), s in zip(teacher.state_dict().items(), student.state_dict().values(), strict=True):
        assert torch.equal(t, s), n
        assert t.data_ptr() != s.data_ptr()
    teacher(torch.randn(5, 3)).sum()  # no grad graph possible through a frozen teacher
    assert all(p.grad is None for p in teacher.parameters())


def test_ema_matches_loop_reference():
    student = student_net()
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    ema_update(teacher, student, 0.996)
    for name, s in student.named_parameters():
        expected = 0.996 * before[name] + (1 - 0.996) * s.detach()
        torch.testing.assert_close(dict(teacher.named_parameters())[name], expected)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_momentum_extremes():
    student = student_net()
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(3.0).add_(1.0)
    frozen = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), frozen, strict=True))
    ema_update(teacher, student, 0.0)
    assert all(
        torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters(), strict=True)
    )


def test_wrapped_student_and_mismatch():
    student = student_net()
    teacher = make_teacher(student)
    wrapper = nn.Module()
    wrapper._orig_mod = student  # what torch.compile's OptimizedModule holds
    assert unwrap_model(wrapper) is student
    with torch.no_grad():
        student[0].weight.add_(1.0)
    ema_update(teacher, wrapper, 0.5)
    torch.testing.assert_close(teacher[0].weight, student[0].weight - 0.5)
    with pytest.raises(ValueError, match="parameters differ"):
        ema_update(nn.Linear(3, 4), student, 0.9)
    with pytest.raises(ValueError, match="momentum must be in"):
        ema_update(teacher, student, 1.5)


def test_ema_update_has_no_host_sync():
    student = student_net().to("meta")  # meta tensors: any host read-back would raise
    ema_update(make_teacher(student), student, 0.99)
