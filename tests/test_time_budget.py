"""--time_limit_minutes: the run's length is fitted to the budget and its schedules still finish."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tests.test_data import make_image_folder
from tests.tiny_run import tiny_cli_args
from trainer.train import loop
from trainer.train.config import config_to_dict, make_config, parse_config
from trainer.train.schedules import cosine_scheduler
from trainer.train.time_budget import RunLength, TimeBudget, affordable_epochs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "done,planned,elapsed,epoch_s,limit,expected",
    [
        (1, 10, 10.0, 10.0, 100.0, 10),  # 9 more fit exactly: capped at the plan
        (1, 10, 10.0, 20.0, 100.0, 5),  # 90 s left / 20 s = 4 more
        (3, 10, 95.0, 10.0, 100.0, 3),  # 5 s left: none more, stop
        (3, 10, 120.0, 10.0, 100.0, 3),  # already over: stop, never below done
        (1, 10, 1e9, 1.0, 0.0, 10),  # no limit
    ],
)
def test_affordable_epochs(done, planned, elapsed, epoch_s, limit, expected):
    assert affordable_epochs(done, planned, elapsed, epoch_s, limit) == expected


def test_affordable_epochs_rejects_a_zero_epoch_time():
    with pytest.raises(ValueError, match="epoch_s must be > 0"):
        affordable_epochs(1, 5, 0.0, 0.0, 10.0)


def test_first_epoch_only_decides_whether_to_go_on_then_fitting_starts():
    cfg = make_config(
        epochs=20, warmup_epochs=5, warmup_teacher_temp_epochs=8, time_limit_minutes=1.0
    )
    budget = TimeBudget.for_config(cfg, started_s=0.0)
    # a slow first epoch (compilation): 20 s of 60 -> would allow 3, but only says "go on"
    assert budget.epochs_after(1, now_s=20.0, epoch_s=20.0) == 20
    # the second epoch took 4 s: 36 s left -> 9 more
    total = budget.epochs_after(2, now_s=24.0, epoch_s=4.0)
    assert total == 11
    asked = RunLength.of(cfg)
    assert budget.fit(total) == RunLength(11, 5, 8)
    assert budget.fit(3) == RunLength(
        3, 2, 3
    )  # warm-ups clipped (the lr's leaves the last epoch to the cosine)
    assert budget.fit(12) == RunLength(
        12, 5, 8
    )  # ... and taken from the plan, not from a clipped value
    assert RunLength.of(cfg) == asked == RunLength(20, 5, 8)  # the configuration is never changed
    with pytest.raises(ValueError, match=r"epochs must be in \[1, 20\]"):
        budget.fit(21)


def test_fitting_uses_the_mean_epoch_and_counts_pending_work_as_spent():
    cfg = make_config(epochs=100, time_limit_minutes=1.0)
    budget = TimeBudget.for_config(cfg, started_s=0.0)
    budget.epochs_after(1, now_s=10.0, epoch_s=10.0)
    assert budget.epochs_after(2, now_s=14.0, epoch_s=4.0) == 2 + 46 // 4  # 46 s left / 4 s
    assert budget.epochs_after(3, now_s=22.0, epoch_s=8.0) == 3 + 38 // 6  # mean of 4 and 8
    assert (
        budget.epochs_after(4, now_s=28.0, epoch_s=6.0, pending_s=8.0) == 4 + 24 // 6
    )  # 8 s still to save


def test_first_epoch_over_budget_stops_the_run():
    cfg = make_config(epochs=20, time_limit_minutes=1.0)
    budget = TimeBudget.for_config(cfg, started_s=0.0)
    assert budget.epochs_after(1, now_s=40.0, epoch_s=40.0) == 1


def _cli(data, out, minutes, epochs):
    return tiny_cli_args(
        data,
        out,
        epochs=epochs,
        warmup_epochs=2,
        saveckp_freq=0,
        log_every=100,
        min_lr="1e-5",
        lr="0.064",
        time_limit_minutes=minutes,
        probe_images=data,
        probe_every=100,
        warmup_teacher_temp="0.02",
        teacher_temp="0.04",
        warmup_teacher_temp_epochs=10,
    )


def test_cli_run_is_cut_to_the_budget_and_ends_on_its_schedule(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", {"": 4})
    clock = {
        "now": 0.0
    }  # fake time: an epoch's training takes 30 s, its outputs 5 s, the rest nothing

    def timed(fn, seconds):
        def wrapper(*args, **kwargs):
            clock["now"] += seconds
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(loop, "time", SimpleNamespace(time=lambda: clock["now"]))
    monkeypatch.setattr(loop, "train_one_epoch", timed(loop.train_one_epoch, 30.0))
    monkeypatch.setattr(loop, "save_epoch_outputs", timed(loop.save_epoch_outputs, 5.0))
    out = tmp_path / "run"
    cfg = parse_config(_cli(data, out, minutes=5.0, epochs=50))
    asked = config_to_dict(cfg)
    loop.train(cfg)
    assert config_to_dict(cfg) == asked  # the budget never changes the configuration
    lines = [json.loads(x) for x in (out / "log.txt").read_text().splitlines()]
    epochs = len(lines)
    assert epochs == 8  # 300 s: 8 epochs of 35 s fit, a 9th would end at 315 s
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert (
        ckpt["args"]["epochs"] == 50 and ckpt["args"]["warmup_epochs"] == 2
    )  # what the user asked for
    assert ckpt["fitted"] == {"epochs": epochs, "warmup_epochs": 2, "warmup_teacher_temp_epochs": 8}
    # the loss's temperatures were rebuilt for the fitted length: its 8-epoch warm-up ends at 0.04
    # (the 10-epoch warm-up asked for would be at 0.02 + 7/9 * 0.02 in the 8th epoch)
    assert lines[-1]["train_teacher_temp"] == pytest.approx(0.04, rel=1e-9)
    assert [x["train_teacher_temp"] for x in lines[:2]] == pytest.approx(
        [0.02, 0.02 + 0.02 / 9]
    )  # as asked
    # one step per epoch: the last step used the last value of the schedule rebuilt for the fitted
    # length
    base = 0.064 * 4 / 256
    assert lines[-1]["train_lr"] == pytest.approx(
        cosine_scheduler(base, 1e-5, epochs, 1, 2)[-1], rel=1e-9
    )
    assert lines[-1]["train_momentum"] == pytest.approx(
        cosine_scheduler(0.996, 1.0, epochs, 1)[-1], rel=1e-12
    )
    probed = sorted(p.name for p in (out / "probes").iterdir())
    assert probed == [
        "epoch0000",
        f"epoch{len(lines) - 1:04d}",
    ]  # the first and the (fitted) last epoch
