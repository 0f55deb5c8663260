"""Atomic writes and the backbone safetensors export round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.model.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    export_backbone_safetensors,
    load_backbone,
    load_checkpoint,
)
from trainer.model.vit import build_vit


def test_atomic_save_never_leaves_a_truncated_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "checkpoint.pth"
    atomic_torch_save({"epoch": 1, "w": torch.ones(3)}, target)

    def boom(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        atomic_torch_save({"epoch": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_safetensors_export_round_trip(tmp_path: Path) -> None:
    model = build_vit("vit_tiny", 16)
    path = tmp_path / "teacher_backbone.safetensors"
    export_backbone_safetensors(model, path, arch="vit_tiny", epoch=3, trained=False)
    loaded, info = load_backbone(path)
    assert (info.arch, info.patch_size, info.num_heads, info.epoch, info.trained) == (
        "vit_tiny",
        16,
        3,
        3,
        False,
    )
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    from fractions import Fraction

    path = tmp_path / "evil.pth"
    torch.save({"obj": Fraction(1, 3)}, path)  # an arbitrary pickled class
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)


def test_authors_namespace_args_are_accepted(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "authors.pth"
    torch.save({"args": argparse.Namespace(arch="vit_small"), "epoch": 3}, path)
    obj = load_checkpoint(path)
    assert obj["args"].arch == "vit_small" and obj["epoch"] == 3


def test_authors_full_checkpoint_loads_as_backbone(tmp_path: Path) -> None:
    """The authors' layout: DDP ``module.`` prefixes, head keys, Namespace args."""
    import argparse

    from trainer.model.head import DINOHead, MultiCropWrapper

    backbone = build_vit(embed_dim=64, depth=2, num_heads=1, patch_size=8)
    wrapped = MultiCropWrapper(backbone, DINOHead(64, 10, hidden_dim=16, bottleneck_dim=8))
    student = {f"module.{k}": v for k, v in wrapped.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save(
        {
            "student": student,
            "teacher": wrapped.state_dict(),
            "epoch": 5,
            "args": argparse.Namespace(arch="vit_small"),
        },
        path,
    )
    for which in ("teacher", "student"):
        model, info = load_backbone(path, which)
        assert (info.patch_size, info.embed_dim, info.depth, info.num_heads, info.epoch) == (
            8,
            64,
            2,
            1,
            5,
        )
        assert torch.equal(model.pos_embed, backbone.pos_embed)


def test_fp16_export_round_trips_to_float32_with_extra(tmp_path):
    import torch

    from trainer.model.checkpoint import export_backbone_safetensors, load_backbone
    from trainer.model.vit import build_vit

    torch.manual_seed(0)
    model = build_vit("vit_tiny", 16)
    path = tmp_path / "m.safetensors"
    export_backbone_safetensors(
        model, path, "vit_tiny", 3, extra={"summary": "tiny test model"}, dtype=torch.float16
    )
    fp32_bytes = sum(v.numel() * 4 for v in model.state_dict().values())
    assert path.stat().st_size < 0.6 * fp32_bytes  # half-size tensors on disk
    loaded, info = load_backbone(path)
    assert info.extra == {"summary": "tiny test model"} and info.epoch == 3
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, value.half().float(), rtol=0, atol=0)
