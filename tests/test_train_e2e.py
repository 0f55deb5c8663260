"""A tiny end-to-end run through the real CLI entry point, with a corrupt image and a NaN."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.test_data import make_image_folder
from tests.tiny_run import tiny_cli_args, tiny_student_teacher
from trainer import run
from trainer.model.checkpoint import load_backbone
from trainer.train import loop
from trainer.train.engine import NonFiniteLossError
from trainer.train.loss import DINOLoss

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(data: Path, out: Path, probes: Path, log_every: int) -> list[str]:
    return tiny_cli_args(
        data,
        out,
        local_crops_number=2,
        out_dim=32,
        epochs=2,
        warmup_epochs=1,
        saveckp_freq=0,
        log_every=log_every,
        probe_images=probes,
        knn_every=1,
        knn_train_data=data,
        knn_val_data=data,
        knn_resize=16,
        knn_crop=16,
        knn_k=3,
    )


def test_cli_run_then_nan_stops_with_checkpoint_intact(tmp_path, monkeypatch):
    # 7 good images + 1 corrupt = 8 = 2 full batches, so the corrupt file is never in a dropped tail
    data = make_image_folder(tmp_path / "data", {"a": 4, "b": 3}, corrupt=1)
    probes = make_image_folder(tmp_path / "probes", {"": 1}, size=(20, 20))
    out = tmp_path / "run"
    real_forward = DINOLoss.forward

    def nan_in_second_epoch(self, student_output, teacher_output, epoch):
        loss = real_forward(self, student_output, teacher_output, epoch)
        return loss * float("nan") if epoch == 1 else loss

    monkeypatch.setattr(DINOLoss, "forward", nan_in_second_epoch)
    with pytest.raises(
        NonFiniteLossError, match="NaN or infinite in epoch 1.*checkpoint.pth.*not overwritten"
    ):
        run.main(_cli(data, out, probes, log_every=100))

    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and torch.isfinite(ckpt["teacher"]["backbone.pos_embed"]).all()
    model, info = load_backbone(out / "teacher_backbone.safetensors")  # strict=True inside
    assert (info.arch, info.patch_size, info.embed_dim, info.epoch) == ("vit_tiny", 4, 192, 1)
    qkv = "blocks.0.attn.qkv.weight"
    assert torch.equal(model.state_dict()[qkv], ckpt["teacher"][f"backbone.{qkv}"])
    with safe_open(str(out / "teacher_backbone.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])

    lines = (out / "log.txt").read_text().splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert stats["epoch"] == 0 and stats["train_corrupt_files"] == 1
    for key in (
        "train_loss",
        "train_lr",
        "train_wd",
        "train_teacher_entropy",
        "train_kl",
        "train_center_norm",
        "knn_k3_top1",
        "knn_k3_top5",
    ):
        assert key in stats and stats[key] == stats[key], key  # present and not NaN
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["epoch"] == 0 and {
        "loss",
        "lr",
        "wd",
        "momentum",
        "teacher_temp",
        "img_per_s",
    } <= set(metrics[0])
    heads = 3
    assert len(list((out / "probes" / "epoch0000").glob("*.png"))) == 1 + 2 * heads


def test_nan_is_caught_at_a_logging_step_too(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "data", {"": 8})
    monkeypatch.setattr(
        DINOLoss, "forward", lambda self, s, t, epoch: (s.sum() + t.sum()) * float("inf")
    )
    cli = _cli(data, tmp_path / "run", data, log_every=1)
    cli = cli[: cli.index("--probe_images")]
    with pytest.raises(NonFiniteLossError, match="epoch 0 \\(by step 0\\)"):
        run.main(cli)
    assert not (tmp_path / "run" / "checkpoint.pth").exists()


def test_script_entry_point_help_lists_flags():
    result = subprocess.run(
        [sys.executable, str(ROOT / "trainer" / "run.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT.parent,
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--arch",
        "--out_dim",
        "--momentum_teacher",
        "--use_fp16",
        "--probe_images",
        "--config",
    ):
        assert flag in result.stdout


def test_device_side_augmentation_path_runs_and_counts_corrupt_files(
    tmp_path, monkeypatch, tiny_networks
):

    from tests.test_checkpointing import tiny_config

    tiny_networks(hidden_dim=64, bottleneck_dim=16)
    data = make_image_folder(tmp_path / "data", {"a": 4, "b": 3}, corrupt=1)
    stats = loop.train(
        tiny_config(data, tmp_path / "run", epochs=1, warmup_epochs=0, gpu_augment=True)
    )
    assert stats["train_corrupt_files"] == 1 and stats["train_loss"] == stats["train_loss"]
    assert (tmp_path / "run" / "teacher_backbone.safetensors").is_file()


def test_train_step_applies_schedules_ema_and_last_layer_freeze(monkeypatch):
    import numpy as np

    from trainer.train.engine import Schedules, TrainContext, train_step
    from trainer.train.optim import build_optimizer, get_params_groups

    cfg, student, teacher = tiny_student_teacher(
        monkeypatch, epochs=2, freeze_last_layer=1, drop_path_rate=0.0
    )
    schedules = Schedules(
        lr=np.array([0.1, 0.2]), wd=np.array([0.3, 0.5]), momentum=np.array([0.9, 0.8])
    )
    ctx = TrainContext(
        cfg,
        student,
        teacher,
        student,
        teacher,
        DINOLoss(16, 3, 0.04, 0.04, 0, 2),
        build_optimizer("sgd", get_params_groups(student)),
        schedules,
        torch.device("cpu"),
        "fp32",
    )
    crops = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    old_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    old_last = student.head.last_layer.weight_v.clone()
    old_qkv = student.backbone.blocks[0].attn.qkv.weight.clone()
    train_step(ctx, crops, epoch=0, it=1)
    groups = ctx.optimizer.param_groups
    assert groups[0]["lr"] == groups[1]["lr"] == 0.2 and groups[0]["weight_decay"] == 0.5
    assert groups[1]["weight_decay"] == 0.0
    assert torch.equal(student.head.last_layer.weight_v, old_last)  # frozen during epoch 0
    new_student = student.state_dict()
    for name, value in teacher.named_parameters():
        expected = 0.8 * old_teacher[name] + 0.2 * new_student[name]
        assert torch.allclose(value, expected, atol=1e-6), name
    assert not torch.equal(
        student.backbone.blocks[0].attn.qkv.weight, old_qkv
    )  # the student did learn
