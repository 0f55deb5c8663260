"""A NaN/inf loss changes neither student, optimizer state nor teacher, and stops the run."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_checkpointing import tiny_config
from tests.test_data import make_image_folder
from tests.tiny_run import tiny_cli_args, tiny_student_teacher
from trainer.train import build, loop
from trainer.train.config import make_config
from trainer.train.ema import ema_update
from trainer.train.engine import NonFiniteLossError, Schedules, TrainContext, train_step
from trainer.train.loss import DINOLoss
from trainer.train.optim import LARS, build_optimizer, get_params_groups
from trainer.train.skip_step import skip_nonfinite_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OPTIMIZERS = {
    "adamw_foreach": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.05, foreach=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.05, fused=True),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05),
    "lars": lambda p: LARS(p, lr=0.1, weight_decay=0.05),
}


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


def _set_grads(model: nn.Module, seed: int, poison: bool = False) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
        if poison:
            p.grad[..., 0] = float("nan")


def _state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {f"param{i}": p.detach().clone() for i, p in enumerate(model.parameters())}
    for i, p in enumerate(model.parameters()):
        for name, value in opt.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                out[f"state{i}.{name}"] = value.clone()
    return out


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_a_nonfinite_step_leaves_params_and_state_as_they_were(kind):
    model = _net()
    opt = OPTIMIZERS[kind](model.parameters())
    _set_grads(model, 1)
    skip_nonfinite_step(opt, torch.tensor(True))
    before = _state(model, opt)
    _set_grads(model, 2, poison=True)
    skip_nonfinite_step(opt, torch.tensor(False))
    after = _state(model, opt)
    assert after.keys() == before.keys()
    for key in before:
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_skipped_first_step_then_good_steps_match_an_optimizer_that_never_saw_it(kind):
    """A skipped first step (whose state the step creates) leaves the optimizer as if new."""
    model, reference = _net(), _net()
    opt = OPTIMIZERS[kind](model.parameters())
    ref_opt = OPTIMIZERS[kind](reference.parameters())
    _set_grads(model, 5, poison=True)
    skip_nonfinite_step(opt, torch.tensor(False))
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)
    for seed in (6, 7):
        _set_grads(model, seed)
        _set_grads(reference, seed)
        skip_nonfinite_step(opt, torch.tensor(True))
        ref_opt.step()  # the plain step, for reference
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_finite_step_is_the_plain_step():
    model, reference = _net(), _net()
    opt = OPTIMIZERS["adamw_foreach"](model.parameters())
    ref_opt = OPTIMIZERS["adamw_foreach"](reference.parameters())
    for seed in (1, 2):
        _set_grads(model, seed)
        _set_grads(reference, seed)
        skip_nonfinite_step(opt, torch.tensor(True))
        ref_opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


def test_ema_with_a_flag_matches_the_formula_and_skips_exactly():
    teacher, student = _net(0), _net(1)
    old = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9, finite=torch.tensor(False))
    for p, o in zip(teacher.parameters(), old, strict=True):
        assert torch.equal(p, o)
    ema_update(teacher, student, 0.9, finite=torch.tensor(True))
    for p, o, s in zip(teacher.parameters(), old, student.parameters(), strict=True):
        torch.testing.assert_close(p, 0.9 * o + 0.1 * s, rtol=0, atol=1e-7)


def test_ema_and_skipped_step_have_no_host_sync():
    model = _net().to("meta")  # meta tensors have no data: any host read-back would raise
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    flag = torch.tensor(False, device="meta")
    skip_nonfinite_step(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), flag)
    ema_update(copy.deepcopy(model), model, 0.99, finite=flag)


def _tiny_context(monkeypatch, optimizer: str) -> TrainContext:
    cfg, student, teacher = tiny_student_teacher(monkeypatch, epochs=1, optimizer=optimizer)
    schedules = Schedules(lr=np.full(3, 0.1), wd=np.full(3, 0.04), momentum=np.full(3, 0.9))
    opt = build_optimizer(optimizer, get_params_groups(student))
    return TrainContext(
        cfg,
        student,
        teacher,
        student,
        teacher,
        DINOLoss(16, 3, 0.04, 0.04, 0, 1),
        opt,
        schedules,
        torch.device("cpu"),
        "fp32",
    )


@pytest.mark.parametrize("optimizer", ["adamw", "lars"])
def test_nan_loss_in_a_train_step_changes_neither_student_nor_teacher(monkeypatch, optimizer):
    ctx = _tiny_context(monkeypatch, optimizer)
    crops = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    train_step(ctx, crops, epoch=0, it=0)  # a good step first: optimizer state exists
    student = {k: v.clone() for k, v in ctx.student_module.state_dict().items()}
    teacher = {k: v.clone() for k, v in ctx.teacher_module.state_dict().items()}
    real_forward = DINOLoss.forward
    monkeypatch.setattr(
        DINOLoss, "forward", lambda self, s, t, e: real_forward(self, s, t, e) * float("nan")
    )
    loss, _, _ = train_step(ctx, crops, epoch=0, it=1)
    assert torch.isnan(loss)
    for name, value in ctx.student_module.state_dict().items():
        assert torch.equal(value, student[name]), name
    for name, value in ctx.teacher_module.state_dict().items():
        assert torch.equal(value, teacher[name]), name
    monkeypatch.setattr(DINOLoss, "forward", real_forward)
    loss, _, _ = train_step(ctx, crops, epoch=0, it=2)  # training goes on from the same weights
    assert torch.isfinite(loss)
    assert not torch.equal(
        ctx.teacher_module.state_dict()["head.mlp.0.weight"], teacher["head.mlp.0.weight"]
    )


def test_an_infinite_gradient_with_a_finite_loss_skips_the_step_too(monkeypatch):
    """As GradScaler does: a non-finite gradient (the same on every rank after DDP's all-reduce)."""
    ctx = _tiny_context(monkeypatch, "adamw")
    crops = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    train_step(ctx, crops, epoch=0, it=0)
    student = {k: v.clone() for k, v in ctx.student_module.state_dict().items()}
    teacher = {k: v.clone() for k, v in ctx.teacher_module.state_dict().items()}
    hook = ctx.student_module.backbone.cls_token.register_hook(lambda g: g * float("inf"))
    loss, _, _ = train_step(ctx, crops, epoch=0, it=1)
    hook.remove()
    assert torch.isfinite(loss)
    for name, value in ctx.student_module.state_dict().items():
        assert torch.equal(value, student[name]), name
    for name, value in ctx.teacher_module.state_dict().items():
        assert torch.equal(value, teacher[name]), name


def test_a_nan_mid_epoch_stops_the_run_before_any_checkpoint_with_a_clear_error(
    tmp_path, monkeypatch, tiny_networks
):
    """One NaN step in the middle of epoch 1, read back only at the end of the epoch."""
    tiny_networks()
    data = make_image_folder(tmp_path / "data", {"": 12})
    out = tmp_path / "run"
    real_forward = DINOLoss.forward
    calls = {"n": 0}

    def nan_at_the_fifth_step(self, s, t, epoch):
        calls["n"] += 1
        loss = real_forward(self, s, t, epoch)
        return loss * float("nan") if calls["n"] == 5 else loss  # epoch 1, its 2nd of 3 steps

    contexts = []
    real_epoch = loop.train_one_epoch

    def keep_context(ctx, loader, epoch):
        contexts.append(ctx)
        return real_epoch(ctx, loader, epoch)

    monkeypatch.setattr(DINOLoss, "forward", nan_at_the_fifth_step)
    monkeypatch.setattr(loop, "train_one_epoch", keep_context)
    cfg = tiny_config(data, out, epochs=3, saveckp_freq=0, log_every=100)
    with pytest.raises(NonFiniteLossError, match=r"Loss is not finite, stopping training.*epoch 1"):
        loop.train(cfg)
    assert calls["n"] == 6  # the run went on to the end of epoch 1, where the flag was read
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1  # from epoch 0: epoch 1 was never saved
    for part in ("student", "teacher"):
        assert all(torch.isfinite(v).all() for v in ckpt[part].values() if v.is_floating_point())
    teacher = contexts[-1].teacher_module
    assert all(torch.isfinite(p).all() for p in teacher.parameters())  # no NaN reached the teacher
    assert len((out / "log.txt").read_text().splitlines()) == 1


def test_the_command_ends_with_the_message_and_status_1(
    tmp_path, monkeypatch, caplog, tiny_networks
):
    from trainer import run

    tiny_networks()
    monkeypatch.setattr(
        DINOLoss, "forward", lambda self, s, t, e: (s.sum() + t.sum()) * float("nan")
    )
    data = make_image_folder(tmp_path / "data", {"": 4})
    argv = tiny_cli_args(data, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        run.cli(argv)
    assert exit_info.value.code == 1
    assert "Loss is not finite, stopping training" in caplog.text
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_the_teacher_never_drops_paths_whatever_the_rate():
    cfg = make_config(
        arch="vit_tiny",
        patch_size=4,
        global_crops_size=16,
        local_crops_size=8,
        out_dim=16,
        drop_path_rate=0.5,
    )
    student, teacher = build.build_student_teacher(cfg)
    rates = [getattr(m, "drop_prob", 0.0) for m in student.backbone.modules()]
    assert max(rates) == pytest.approx(0.5)  # the student's last block drops paths at the rate
    assert all(getattr(m, "drop_prob", 0.0) == 0.0 for m in teacher.backbone.modules())
    x = torch.randn(2, 3, 16, 16)
    teacher.train()
    student.train()
    with torch.no_grad():
        assert torch.equal(
            teacher.backbone(x), teacher.backbone(x)
        )  # no random paths in train mode
        torch.manual_seed(0)
        first = student.backbone(x)
        torch.manual_seed(1)
        assert not torch.equal(first, student.backbone(x))  # while the student's are random
