"""Atomic writes and the backbone safetensors export round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    export_backbone_safetensors,
    load_backbone,
    load_checkpoint,
)
from trainer.vit import build_vit


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
    assert (info.arch, info.patch_size, info.num_heads, info.epoch, info.trained) == ("vit_tiny", 16, 3, 3, False)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "evil.pth"
    torch.save({"args": argparse.Namespace(arch="vit_small")}, path)  # an arbitrary pickled class
    with pytest.raises(CheckpointError, match="weights-only"):
        load_checkpoint(path)
