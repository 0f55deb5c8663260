"""Checkpoints: official layout, weights-only loading, atomic writes, and exact kill-and-resume."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from tests.test_data import make_image_folder
from trainer.model.checkpoint import atomic_torch_save, load_backbone
from trainer.model.head import DINOHead
from trainer.model.vit import build_vit
from trainer.train import build, loop
from trainer.train.config import config_to_dict, make_config

OUT_DIM = 32
OFFICIAL_TOP_KEYS = {"student", "teacher", "optimizer", "epoch", "args", "dino_loss", "fp16_scaler"}
OFFICIAL_BACKBONE_KEYS = [
    "cls_token",
    "pos_embed",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "blocks.0.norm1.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.attn.proj.bias",
    "blocks.1.norm2.bias",
    "blocks.1.mlp.fc1.weight",
    "blocks.1.mlp.fc2.bias",
    "norm.weight",
    "norm.bias",
]
OFFICIAL_HEAD_KEYS = [
    "mlp.0.weight",
    "mlp.0.bias",
    "mlp.2.weight",
    "mlp.4.bias",
    "last_layer.weight_g",
    "last_layer.weight_v",
]


def _tiny_vit(arch: str, patch_size: int, drop_path_rate: float = 0.0):
    return build_vit(
        embed_dim=48, depth=2, num_heads=3, patch_size=patch_size, drop_path_rate=drop_path_rate
    )


def tiny_config(data: Path, out: Path, **over):
    values = dict(
        data_path=str(data),
        output_dir=str(out),
        device="cpu",
        arch="vit_tiny",
        patch_size=4,
        global_crops_size=16,
        local_crops_size=8,
        local_crops_number=2,
        out_dim=OUT_DIM,
        epochs=2,
        warmup_epochs=1,
        batch_size_per_gpu=4,
        num_workers=0,
        saveckp_freq=1,
        log_every=1,
        seed=3,
    )
    return make_config(**{**values, **over})


@pytest.fixture(scope="module")
def tiny_models():
    """Shrink the backbone and the head so each checkpoint is a few MB (same code paths)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "build_vit", _tiny_vit)
        mp.setattr(build, "DINOHead", partial(DINOHead, hidden_dim=64, bottleneck_dim=16))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        yield mp
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def straight_run(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    data = make_image_folder(root / "data", {"a": 4, "b": 4})
    out = root / "straight"
    loop.train(tiny_config(data, out))
    return data, out


def _states_equal(a, b, path="") -> list[str]:
    """Names of every differing entry of two nested checkpoint structures."""
    if isinstance(a, torch.Tensor):
        return [] if torch.equal(a, b) else [path]
    if isinstance(a, dict):
        if set(a) != set(b):
            return [f"{path} keys"]
        return [d for k in a for d in _states_equal(a[k], b[k], f"{path}/{k}")]
    if isinstance(a, (list, tuple)):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _states_equal(x, y, f"{path}/{i}")
        ]
    return [] if a == b else [path]


def test_kill_and_resume_gives_identical_weights(straight_run, tiny_models, tmp_path):
    data, straight = straight_run
    out = tmp_path / "resumed"
    real_epoch = loop.train_one_epoch

    def killed_in_second_epoch(ctx, loader, epoch):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill")
        return real_epoch(ctx, loader, epoch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "train_one_epoch", killed_in_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            loop.train(tiny_config(data, out))
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 1
    epochs_run = []

    def counting(ctx, loader, epoch):
        epochs_run.append(epoch)
        return real_epoch(ctx, loader, epoch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "train_one_epoch", counting)
        loop.train(tiny_config(data, out))  # resumes at epoch 1
    assert epochs_run == [1]
    a = torch.load(straight / "checkpoint.pth", weights_only=True)
    b = torch.load(out / "checkpoint.pth", weights_only=True)
    for key in ("student", "teacher", "optimizer", "dino_loss", "epoch"):
        assert _states_equal(a[key], b[key]) == [], key
    first_epoch = torch.load(straight / "checkpoint0000.pth", weights_only=True)
    assert not torch.equal(
        a["student"]["head.mlp.0.weight"], first_epoch["student"]["head.mlp.0.weight"]
    )


def test_checkpoint_has_the_official_layout(straight_run):
    _, out = straight_run
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert set(ckpt) == OFFICIAL_TOP_KEYS | {
        "fitted"
    }  # the authors' keys, plus the run's fitted length
    assert ckpt["epoch"] == 2 and ckpt["fp16_scaler"] is None
    assert type(ckpt["args"]) is dict and ckpt["args"] == config_to_dict(
        tiny_config(ckpt["args"]["data_path"], out)
    )
    assert ckpt["fitted"] == {
        "epochs": 2,
        "warmup_epochs": 1,
        "warmup_teacher_temp_epochs": 0,
    }  # no budget: as asked
    for part in ("student", "teacher"):
        keys = set(ckpt[part])
        assert all(k.startswith(("backbone.", "head.")) for k in keys), part
        assert {f"backbone.{k}" for k in OFFICIAL_BACKBONE_KEYS} <= keys
        assert {f"head.{k}" for k in OFFICIAL_HEAD_KEYS} <= keys
    assert set(ckpt["student"]) == set(ckpt["teacher"])
    assert ckpt["student"]["backbone.pos_embed"].shape == (
        1,
        1 + (224 // 4) ** 2,
        48,
    )  # 224 px grid
    assert (
        ckpt["dino_loss"]["center"].shape == (1, OUT_DIM)
        and ckpt["dino_loss"]["center"].abs().sum() > 0
    )
    assert (out / "checkpoint0000.pth").is_file() and (out / "checkpoint0001.pth").is_file()
    model, info = load_backbone(out / "checkpoint.pth")
    assert info.epoch == 2 and info.patch_size == 4


def test_teacher_is_an_ema_of_the_student_not_a_copy(straight_run):
    _, out = straight_run
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    s, t = (
        ckpt["student"]["backbone.blocks.0.attn.qkv.weight"],
        ckpt["teacher"]["backbone.blocks.0.attn.qkv.weight"],
    )
    assert not torch.equal(s, t) and torch.allclose(s, t, atol=0.05)


def test_resume_with_another_architecture_is_refused(straight_run, tiny_models, tmp_path):
    data, out = straight_run
    with pytest.raises(ValueError, match="out_dim=32 but this run has out_dim=16"):
        loop.train(tiny_config(data, out, out_dim=16, epochs=3))


def test_failed_save_leaves_the_previous_checkpoint_whole(straight_run, tiny_models, tmp_path):
    data, straight = straight_run
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("checkpoint.pth", "teacher_backbone.safetensors"):
        (out / name).write_bytes((straight / name).read_bytes())
    before = (out / "checkpoint.pth").read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", failing_save)
        with pytest.raises(OSError, match="disk full"):
            loop.train(tiny_config(data, out, epochs=3))
    assert (out / "checkpoint.pth").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []
    with pytest.raises(OSError, match="disk full"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "save", failing_save)
        atomic_torch_save({"x": torch.ones(1)}, out / "checkpoint.pth")
    assert (out / "checkpoint.pth").read_bytes() == before
