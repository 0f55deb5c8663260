"""Model card summaries (files, zoo, placeholder); the shipped model in the default order."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import backend.models.entries as registry_mod
from backend.analysis.service import AttentionService
from backend.main import create_app
from backend.models import zoo
from backend.models.placeholder import PLACEHOLDER_ID
from backend.models.registry import ModelRegistry
from backend.settings import SHIPPED_DEFAULT_ID, ZOO_DEFAULT_ID
from tests.service_helpers import (
    SHIPPED_SUMMARY,
    image_bytes,
    isolated_settings,
    write_shipped_checkpoint,
    write_tiny_checkpoint,
)
from trainer.model.checkpoint import BackboneInfo


def _make_newest(path: Path) -> None:
    later = time.time() + 100
    os.utime(path, (later, later))


@pytest.fixture()
def shipped_and_newer(tmp_path):
    """The shipped file plus a newer checkpoint in the same folder; downloads off."""
    settings = isolated_settings(tmp_path)
    write_shipped_checkpoint(settings.checkpoint_dir)
    newer, _ = write_tiny_checkpoint(settings.checkpoint_dir, "newer")
    _make_newest(newer)
    return settings


def test_shipped_model_beats_a_newer_file(shipped_and_newer):
    service = AttentionService(shipped_and_newer)
    service.start()
    assert service.ready and service.default_model == SHIPPED_DEFAULT_ID == "dino_vits16_duts"
    assert service.registry.get(SHIPPED_DEFAULT_ID).info.arch == "vit_tiny"


def test_without_the_shipped_model_the_newest_file_wins(shipped_and_newer):
    (shipped_and_newer.checkpoint_dir / f"{SHIPPED_DEFAULT_ID}.safetensors").unlink()
    assert AttentionService(shipped_and_newer).choose_default() == "newer"


def test_an_unreadable_shipped_file_falls_through_to_the_newest(shipped_and_newer):
    (shipped_and_newer.checkpoint_dir / f"{SHIPPED_DEFAULT_ID}.safetensors").write_bytes(
        b"truncated"
    )
    assert AttentionService(shipped_and_newer).choose_default() == "newer"


def test_default_model_setting_wins(shipped_and_newer):
    settings = shipped_and_newer.model_copy(update={"default_model": "newer"})
    assert AttentionService(settings).choose_default() == "newer"


def test_cached_zoo_model_comes_before_the_shipped_one(shipped_and_newer):
    settings = shipped_and_newer.model_copy(update={"allow_downloads": True})
    zoo.ZOO[ZOO_DEFAULT_ID].cache_path(settings.cache_dir).write_bytes(
        b"cached"
    )  # fetch() trusts the cache
    assert AttentionService(settings).choose_default() == ZOO_DEFAULT_ID


def test_failed_zoo_download_falls_back_to_the_shipped_model(shipped_and_newer):
    settings = shipped_and_newer.model_copy(
        update={
            "allow_downloads": True,
            "download_base_url": "http://127.0.0.1:9",
            "download_timeout_s": 1.0,
        }
    )
    service = AttentionService(settings)
    assert service.choose_default() == SHIPPED_DEFAULT_ID
    assert service.registry.resolve(ZOO_DEFAULT_ID).error  # the failure is shown in GET /models


def test_models_and_attention_carry_the_summary(shipped_and_newer):
    with TestClient(create_app(shipped_and_newer)) as client:
        listing = client.get("/models").json()
        by_id = {m["id"]: m for m in listing["models"]}
        assert listing["default"] == SHIPPED_DEFAULT_ID
        assert by_id[SHIPPED_DEFAULT_ID]["summary"] == SHIPPED_SUMMARY
        assert by_id["newer"]["summary"] is None  # no extra metadata
        assert (
            by_id["dino_vits8"]["summary"]
            == "Official DINO weights (Caron et al. 2021), ViT-S/8, ImageNet-1k"
        )
        assert all("summary" in m for m in listing["models"])
        reply = client.post(
            "/attention",
            files={"image": ("a.png", image_bytes(), "image/png")},
            data={"image_size": "32", "overlays": "false"},
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["model"] == SHIPPED_DEFAULT_ID and body["summary"] == SHIPPED_SUMMARY


def test_zoo_summaries_name_the_architecture(tmp_path):
    entries = {
        e.id: e for e in ModelRegistry(isolated_settings(tmp_path)).entries() if e.source == "zoo"
    }
    assert (
        entries["dino_vits16"].summary
        == "Official DINO weights (Caron et al. 2021), ViT-S/16, ImageNet-1k"
    )
    assert (
        entries["dino_vitb8"].summary
        == "Official DINO weights (Caron et al. 2021), ViT-B/8, ImageNet-1k"
    )


def test_placeholder_summary_says_untrained(tmp_path):
    service = AttentionService(isolated_settings(tmp_path))
    service.start()
    assert service.default_model == PLACEHOLDER_ID
    entry = service.registry.resolve(PLACEHOLDER_ID)
    assert "random-init placeholder" in entry.summary.lower() and "untrained" in entry.summary
    assert entry.public(loaded=True)["summary"] == entry.summary


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"summary": "  a card  "}, "a card"),
        ({"summary": ""}, None),
        ({"summary": 41.2}, None),
        ({}, None),
    ],
)
def test_only_a_non_empty_string_is_a_summary(extra, expected):
    assert registry_mod.card_summary(extra) == expected


def test_training_checkpoint_student_gets_the_summary_too(tmp_path, monkeypatch):
    info = BackboneInfo(
        "vit_small", 16, 384, 12, 6, "training-teacher", extra={"summary": "our run"}
    )
    monkeypatch.setattr(registry_mod, "read_backbone", lambda path: ({}, info))
    teacher, student = registry_mod.inspect_file(tmp_path / "checkpoint.pth", "checkpoint")
    assert teacher.summary == "our run" and student.summary == "our run (student)"
    assert student.id == "checkpoint:student"
