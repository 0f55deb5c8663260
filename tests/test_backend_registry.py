"""Checkpoint formats (a)-(d), unavailable files, lazy LRU loading, the default-model rule."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

import backend.models.registry as registry_mod
from backend.analysis.service import AttentionService
from backend.errors import ModelUnavailable, UnknownModel
from backend.models.placeholder import PLACEHOLDER_ID
from backend.models.registry import ModelRegistry
from tests.service_helpers import isolated_settings, tiny_vit, write_tiny_checkpoint


def _attn(model, x):
    with torch.inference_mode():
        return model.get_cls_attention(x)


@pytest.fixture()
def folder_with_every_format(tmp_path):
    settings = isolated_settings(tmp_path, max_loaded_models=2)
    d = settings.checkpoint_dir
    teacher, student, plain, timm_model = (
        tiny_vit(1),
        tiny_vit(2),
        tiny_vit(3),
        tiny_vit(4, embed_dim=128),
    )
    torch.save(plain.state_dict(), d / "official.pth")  # (a)
    head = {"head.mlp.0.weight": torch.zeros(8, 64), "head.last_layer.weight_g": torch.ones(16, 1)}
    torch.save(
        {  # (b) the authors' layout: module./backbone. prefixes, heads, optimizer
            "student": {
                **{f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                **{f"module.{k}": v for k, v in head.items()},
            },
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
            "epoch": 7,
            "optimizer": {"state": {}},
            "train_args": {"arch": "vit_d64", "lr": 0.1},
        },
        d / "full.pth",
    )
    torch.save({"model": timm_model.state_dict(), "epoch": 1}, d / "timm_vit.pt")  # (c)
    write_tiny_checkpoint(d, "ours", seed=5)  # (d)
    (d / "corrupt.pth").write_bytes(b"\x00garbage")
    (d / "corrupt2.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json")
    (d / "notes.txt").write_text("ignored")
    models = {
        "official": plain,
        "full": teacher,
        "full:student": student,
        "timm_vit": timm_model,
        "ours": tiny_vit(5),
    }
    return settings, models


def test_every_format_loads_with_the_right_weights(folder_with_every_format):
    settings, models = folder_with_every_format
    reg = ModelRegistry(settings)
    entries = {e.id: e for e in reg.entries()}
    assert set(models) | {"corrupt", "corrupt2"} <= set(entries) and "notes" not in entries
    assert (
        entries["full"].layout == "training-teacher" and entries["full:student"].which == "student"
    )
    assert (
        entries["timm_vit"].arch == "vit_d128" and entries["timm_vit"].num_heads == 2
    )  # heads = dim / 64
    assert entries["official"].layout == "backbone" and entries["ours"].layout == "safetensors"
    x = torch.randn(1, 3, 40, 48)
    for model_id, reference in models.items():
        loaded = reg.get(model_id)
        assert torch.allclose(_attn(loaded.model, x), _attn(reference.eval(), x), atol=1e-6), (
            model_id
        )


def test_corrupt_files_are_unavailable_and_the_rest_works(folder_with_every_format):
    settings, _ = folder_with_every_format
    reg = ModelRegistry(settings)
    by_id = {e.id: e for e in reg.entries()}
    assert "corrupt.pth" in by_id["corrupt"].error and by_id["corrupt2"].error
    with pytest.raises(ModelUnavailable, match="corrupt"):
        reg.get("corrupt")
    assert reg.get("ours").model is not None
    with pytest.raises(UnknownModel, match="official"):
        reg.resolve("nope")


def test_lru_bound_and_lazy_loading(folder_with_every_format):
    settings, _ = folder_with_every_format
    reg = ModelRegistry(settings)
    assert reg.loaded_ids() == []
    reg.get("official")
    reg.get("ours")
    reg.get("official")  # now most recent
    reg.get("timm_vit")
    assert reg.loaded_ids() == ["official", "timm_vit"]


def test_concurrent_first_use_loads_once(folder_with_every_format, monkeypatch):
    settings, _ = folder_with_every_format
    reg = ModelRegistry(settings)
    calls = []
    real = registry_mod.load_backbone

    def counting(*args, **kw):
        calls.append(args)
        time.sleep(0.05)
        return real(*args, **kw)

    monkeypatch.setattr(registry_mod, "load_backbone", counting)
    got = []
    threads = [threading.Thread(target=lambda: got.append(reg.get("ours"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(g) for g in got}) == 1 and len(got) == 8


def test_new_and_changed_files_are_picked_up(tmp_path):
    settings = isolated_settings(tmp_path)
    reg = ModelRegistry(settings)
    assert [e.id for e in reg.entries() if e.source == "file"] == []
    write_tiny_checkpoint(settings.checkpoint_dir, "late")
    assert reg.resolve("late").error is None
    (settings.checkpoint_dir / "late.safetensors").write_bytes(b"broken now")
    assert reg.resolve("late").error is not None


def test_default_is_newest_file_then_placeholder(tmp_path):
    settings = isolated_settings(tmp_path)
    old, _ = write_tiny_checkpoint(settings.checkpoint_dir, "old")
    write_tiny_checkpoint(settings.checkpoint_dir, "new")
    os.utime(old, (time.time() + 100, time.time() + 100))
    service = AttentionService(settings)
    service.start()
    assert service.ready and service.default_model == "old"
    assert (
        AttentionService(isolated_settings(tmp_path, default_model="new")).choose_default() == "new"
    )


def test_placeholder_when_nothing_else(tmp_path):
    settings = isolated_settings(tmp_path)
    service = AttentionService(settings)
    service.start()
    assert service.ready and service.default_model == PLACEHOLDER_ID
    entry = service.registry.resolve(PLACEHOLDER_ID)
    assert entry.trained is False and service.registry.get(PLACEHOLDER_ID).info.trained is False
    mtime = entry.path.stat().st_mtime_ns
    AttentionService(settings).start()  # created once, reused
    assert entry.path.stat().st_mtime_ns == mtime


def test_unknown_default_is_reported_not_raised(tmp_path):
    service = AttentionService(isolated_settings(tmp_path, default_model="missing"))
    service.start()
    assert not service.ready and "missing" in service.default_error
