"""Schedules: warm-up values, cosine endpoints and shape, teacher temperature, linear scaling."""

import math

import numpy as np
import pytest

from trainer.train.schedules import cosine_scheduler, scaled_lr, teacher_temp_schedule


def reference_cosine(base, final, epochs, niter, warmup_epochs, start):
    warm = warmup_epochs * niter
    out = []
    for i in range(warm):  # linspace with both ends included
        out.append(start + (base - start) * (i / (warm - 1) if warm > 1 else 0.0))
    n_cos = epochs * niter - warm
    for i in range(n_cos):
        out.append(final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / n_cos)))
    return out


@pytest.mark.parametrize("warmup_epochs", [0, 1, 3])
def test_cosine_matches_reference_formula(warmup_epochs):
    sched = cosine_scheduler(
        0.5, 1e-3, epochs=5, niter_per_ep=7, warmup_epochs=warmup_epochs, start_warmup_value=0.01
    )
    ref = reference_cosine(0.5, 1e-3, 5, 7, warmup_epochs, 0.01)
    assert sched.shape == (35,)
    np.testing.assert_allclose(sched, ref, rtol=0, atol=1e-12)


def test_cosine_warmup_endpoints_and_monotonicity():
    sched = cosine_scheduler(
        1.0, 0.1, epochs=10, niter_per_ep=4, warmup_epochs=2, start_warmup_value=0.0
    )
    warm, cos = sched[:8], sched[8:]
    assert warm[0] == 0.0 and warm[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(np.diff(warm), 1.0 / 7)  # linear steps
    assert cos[0] == pytest.approx(1.0)
    assert np.all(np.diff(cos) < 0)
    assert cos[-1] > 0.1 and cos[-1] == pytest.approx(0.1, abs=1e-2)


def test_momentum_schedule_rises_to_one():
    sched = cosine_scheduler(0.996, 1.0, epochs=100, niter_per_ep=10)
    assert sched[0] == pytest.approx(0.996)
    assert np.all(np.diff(sched) >= 0)
    assert sched[-1] == pytest.approx(1.0, abs=1e-8)
    assert sched.max() <= 1.0


def test_cosine_rejects_bad_arguments():
    with pytest.raises(ValueError, match="warmup_epochs .* longer than training"):
        cosine_scheduler(1.0, 0.0, epochs=3, niter_per_ep=5, warmup_epochs=4)
    with pytest.raises(ValueError, match="niter_per_ep"):
        cosine_scheduler(1.0, 0.0, epochs=3, niter_per_ep=0)
    with pytest.raises(TypeError, match="epochs must be an integer"):
        cosine_scheduler(1.0, 0.0, epochs=2.5, niter_per_ep=5)


def test_warmup_over_all_training_is_pure_warmup():
    sched = cosine_scheduler(
        2.0, 0.0, epochs=2, niter_per_ep=3, warmup_epochs=2, start_warmup_value=1.0
    )
    np.testing.assert_allclose(sched, np.linspace(1.0, 2.0, 6))


def test_scaled_lr_linear_rule():
    assert scaled_lr(0.0005, 64, 8) == pytest.approx(0.0005 * 2)
    assert scaled_lr(0.001, 32, 1) == pytest.approx(0.000125)
    with pytest.raises(ValueError, match="world_size"):
        scaled_lr(0.1, 32, 0)


def test_teacher_temp_schedule_endpoints():
    temps = teacher_temp_schedule(0.04, 0.07, warmup_epochs=30, nepochs=100)
    assert temps.shape == (100,)
    assert temps[0] == pytest.approx(0.04)
    assert temps[29] == pytest.approx(0.07)  # last warm-up epoch reaches the target
    np.testing.assert_allclose(temps[29:], 0.07)
    np.testing.assert_allclose(np.diff(temps[:30]), 0.03 / 29)
    assert np.all(teacher_temp_schedule(0.04, 0.04, 0, 5) == 0.04)
    with pytest.raises(ValueError, match="longer than training"):
        teacher_temp_schedule(0.04, 0.07, warmup_epochs=11, nepochs=10)
