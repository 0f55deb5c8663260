"""DINOLoss against an explicit-loop reference of the paper's equations."""

import math

import pytest
import torch

from trainer.train.loss import DINOLoss

B, K = 2, 4


def reference_dino_loss(student, teacher, center, ncrops, teacher_temp, student_temp):
    """Python loops: mean over pairs (q, v != q) of mean over batch of sum_k -p_t log p_s."""
    s, t, c = (
        student.double().tolist(),
        teacher.double().tolist(),
        center.double().flatten().tolist(),
    )
    batch = len(t) // 2

    def softmax(row):
        m = max(row)
        e = [math.exp(x - m) for x in row]
        return [x / sum(e) for x in e]

    total, pairs = 0.0, 0
    for q in range(2):
        for v in range(ncrops):
            if v == q:
                continue
            ce = 0.0
            for b in range(batch):
                p_t = softmax(
                    [(x - ck) / teacher_temp for x, ck in zip(t[q * batch + b], c, strict=True)]
                )
                p_s = softmax([x / student_temp for x in s[v * batch + b]])
                ce += sum(-pt * math.log(ps) for pt, ps in zip(p_t, p_s, strict=True))
            total += ce / batch
            pairs += 1
    return total / pairs


def make_loss(ncrops=4, **kw):
    args = dict(
        out_dim=K,
        ncrops=ncrops,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=3,
        nepochs=10,
    )
    args.update(kw)
    return DINOLoss(**args)


@pytest.mark.parametrize("ncrops", [2, 4])
def test_loss_matches_loop_reference(ncrops):
    torch.manual_seed(0)
    student, teacher = torch.randn(ncrops * B, K), torch.randn(2 * B, K)
    loss_fn = make_loss(ncrops)
    loss_fn.center.copy_(torch.tensor([[0.3, -0.2, 0.1, 0.05]]))
    center = loss_fn.center.clone()
    for epoch in (0, 1):
        temp = loss_fn.teacher_temp_at(epoch)
        expected = reference_dino_loss(student, teacher, center, ncrops, temp, 0.1)
        got = loss_fn(student, teacher, epoch)
        assert got.dtype == torch.float32 and got.ndim == 0
        assert got.item() == pytest.approx(expected, rel=1e-5)
        assert loss_fn.last_teacher_temp == pytest.approx(temp)
        center = loss_fn.center.clone()


def test_two_crops_use_only_cross_pairs():
    # with identical teacher/student rows per view, a same-view pair would add a different term
    torch.manual_seed(1)
    t = torch.randn(2 * B, K)
    student = torch.cat([t.chunk(2)[0] * 0.4, torch.randn(B, K)])
    loss_fn = make_loss(2, warmup_teacher_temp_epochs=0)
    got = loss_fn(student, t, epoch=0)
    p0, p1 = torch.softmax(t.chunk(2)[0] / 0.07, -1), torch.softmax(t.chunk(2)[1] / 0.07, -1)
    ls0, ls1 = (
        torch.log_softmax(student.chunk(2)[0] / 0.1, -1),
        torch.log_softmax(student.chunk(2)[1] / 0.1, -1),
    )
    cross = 0.5 * ((-p0 * ls1).sum(-1).mean() + (-p1 * ls0).sum(-1).mean())
    assert got.item() == pytest.approx(cross.item(), rel=1e-6)


def test_center_ema_arithmetic():
    loss_fn = make_loss(2, center_momentum=0.9)
    teacher = torch.tensor(
        [[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 8.0], [4.0, 0.0, 0.0, 0.0]]
    )
    loss_fn(torch.zeros(2 * B, K), teacher, 0)
    first = 0.1 * torch.tensor([[2.0, 1.0, 1.0, 3.0]])
    torch.testing.assert_close(loss_fn.center, first)
    loss_fn(torch.zeros(2 * B, K), torch.ones(2 * B, K), 0)
    torch.testing.assert_close(loss_fn.center, 0.9 * first + 0.1 * torch.ones(1, K))


def test_center_buffer_initial_state():
    loss_fn = make_loss(out_dim=7, ncrops=3)
    assert loss_fn.center.shape == (1, 7) and torch.all(loss_fn.center == 0)
    assert "center" in dict(loss_fn.named_buffers())


def test_temperature_schedule_endpoints():
    loss_fn = make_loss(
        warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, nepochs=10
    )
    assert loss_fn.teacher_temp_at(0) == pytest.approx(0.04)
    assert loss_fn.teacher_temp_at(1) == pytest.approx(0.055)
    assert loss_fn.teacher_temp_at(2) == pytest.approx(0.07)
    assert loss_fn.teacher_temp_at(9) == pytest.approx(0.07)
    assert loss_fn.teacher_temp_at(25) == pytest.approx(0.07)  # past nepochs keeps the last value


def test_set_schedule_rebuilds_the_temperatures_and_keeps_the_centre():
    loss_fn = make_loss(
        warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3, nepochs=10
    )
    student, teacher = torch.randn(4 * B, K), torch.randn(2 * B, K)
    loss_fn(student, teacher, epoch=0)
    center = loss_fn.center.clone()
    loss_fn.set_schedule(0.02, 0.05, 4, 5)  # a shorter run, a longer warm-up
    assert [loss_fn.teacher_temp_at(e) for e in range(6)] == pytest.approx(
        [0.02, 0.03, 0.04, 0.05, 0.05, 0.05]
    )
    assert torch.equal(loss_fn.center, center)
    expected = reference_dino_loss(student, teacher, loss_fn.center, 4, 0.03, loss_fn.student_temp)
    assert float(loss_fn(student, teacher, epoch=1)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="longer than training"):
        loss_fn.set_schedule(0.02, 0.05, 6, 5)


def test_invariant_to_constant_shift_of_teacher_logits():
    torch.manual_seed(2)
    student, teacher = torch.randn(4 * B, K), torch.randn(2 * B, K)
    a = make_loss()(student, teacher, 0)
    b = make_loss()(student, teacher + 5.0, 0)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


def test_gradient_reaches_student_only():
    torch.manual_seed(3)
    student = torch.randn(4 * B, K, requires_grad=True)
    teacher = torch.randn(2 * B, K, requires_grad=True)
    make_loss()(student, teacher, 0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_half_precision_inputs_computed_in_float32():
    torch.manual_seed(4)
    student, teacher = torch.randn(4 * B, K), torch.randn(2 * B, K)
    ref = make_loss()(student, teacher, 0)
    loss_fn = make_loss()
    got = loss_fn(student.bfloat16(), teacher.bfloat16(), 0)
    assert got.dtype == torch.float32 and loss_fn.center.dtype == torch.float32
    expected = reference_dino_loss(
        student.bfloat16().float(), teacher.bfloat16().float(), torch.zeros(1, K), 4, 0.04, 0.1
    )
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert got.item() == pytest.approx(ref.item(), rel=0.1)


def test_bad_shapes_are_explained():
    loss_fn = make_loss()
    with pytest.raises(ValueError, match="student_output must be"):
        loss_fn(torch.zeros(3 * B, K), torch.zeros(2 * B, K), 0)
    with pytest.raises(ValueError, match="teacher_output must be"):
        loss_fn(torch.zeros(4 * B, K), torch.zeros(3, K), 0)


def test_forward_has_no_host_sync():
    # meta tensors have no data: any .item()/bool()/.cpu() inside forward would raise
    loss_fn = make_loss().to("meta")
    student = torch.randn(4 * B, K, device="meta", requires_grad=True)
    loss = loss_fn(student, torch.randn(2 * B, K, device="meta"), 1)
    assert loss.shape == () and loss.device.type == "meta"
