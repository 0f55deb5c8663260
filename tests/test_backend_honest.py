"""Honest labels: zoo availability in GET /models, ``trained_reason`` in every reply, a file
dropped in becoming the default, npz without pictures, error metrics under the model's id."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.models import zoo
from backend.models.registry import UNTRAINED_REASON
from backend.settings import SHIPPED_DEFAULT_ID
from tests.service_helpers import (
    free_port,
    image_bytes,
    isolated_settings,
    write_shipped_checkpoint,
    write_tiny_checkpoint,
)
from tests.video_clips import write_clip

IMAGE = {"image": ("a.png", image_bytes(64, 48), "image/png")}


def _models(client: TestClient) -> dict[str, dict]:
    return {m["id"]: m for m in client.get("/models").json()["models"]}


def test_offline_zoo_models_are_not_downloadable_here_with_short_labels(tmp_path):
    settings = isolated_settings(tmp_path, allow_downloads=False)
    write_tiny_checkpoint(settings.checkpoint_dir)
    with TestClient(create_app(settings)) as client:
        reply = client.get("/models").json()
        models = {m["id"]: m for m in reply["models"]}
    for model_id in zoo.ZOO:
        m = models[model_id]
        assert m["available"] is False and m["status"] == "not downloadable here"
        assert m["error"] == "downloads are off" and "DINO_ALLOW_DOWNLOADS=false" in m["detail"]
        assert str(tmp_path) not in m["detail"] and zoo.ZOO[model_id].name in m["detail"]
    assert models["tiny"]["available"] and models["tiny"]["status"] == "ready"
    assert reply["limits"]["max_image_size"] == settings.max_image_size


def test_downloadable_zoo_models_are_download_on_first_use_not_available(tmp_path):
    settings = isolated_settings(
        tmp_path, allow_downloads=True, default_model="tiny", download_base_url="http://x.invalid"
    )
    write_tiny_checkpoint(settings.checkpoint_dir)
    start = time.monotonic()
    with TestClient(create_app(settings)) as client:
        models = _models(client)
    assert time.monotonic() - start < 30  # listing tries no download
    m = models["dino_vits8"]
    assert m["available"] is False and m["status"] == "download on first use"
    assert m["error"] is None and m["detail"] is None


def test_an_unreachable_host_marks_its_zoo_models_with_the_raw_error_in_detail(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/dino"  # nothing listens there
    settings = isolated_settings(
        tmp_path, allow_downloads=True, download_base_url=dead, download_timeout_s=2
    )
    write_tiny_checkpoint(settings.checkpoint_dir, "local")
    with TestClient(create_app(settings)) as client:  # the default's check fails: falls back
        models = _models(client)
    for model_id in ("dino_vits16", "dino_vits8", "dino_vitb16"):  # same host
        m = models[model_id]
        assert m["available"] is False and m["status"] == "not downloadable here", m
        assert m["error"] == "the download failed"
        assert "could not download dino_vits16" in m["detail"] and "urlopen error" in m["detail"]
        assert str(tmp_path) not in m["detail"]
    assert models["dinov2_vits14"]["status"] == "download on first use"  # another host


def test_trained_reason_in_replies_and_npz_meta(tmp_path):
    settings = isolated_settings(tmp_path)
    write_tiny_checkpoint(settings.checkpoint_dir, "tiny")  # exported as trained
    with TestClient(create_app(settings)) as client:
        ph = client.post(
            "/attention", files=IMAGE, data={"model": "placeholder_vits16", "overlays": "false"}
        )
        assert ph.status_code == 404  # no placeholder when a file exists
        trained = client.post("/attention", files=IMAGE, data={"overlays": "false"}).json()
        assert trained["trained"] is True and trained["trained_reason"] is None
        assert _models(client)["tiny"]["trained_reason"] is None


@pytest.fixture()
def untrained_client(tmp_path):
    settings = isolated_settings(tmp_path)  # no file: the random-init placeholder serves
    with TestClient(create_app(settings)) as client:
        yield client


def test_untrained_replies_say_why_their_maps_show_structure(untrained_client, tmp_path):
    c = untrained_client
    one = c.post("/attention", files=IMAGE, data={"overlays": "false"}).json()
    assert one["trained"] is False and one["trained_reason"] == UNTRAINED_REASON
    assert "colour, not learning" in UNTRAINED_REASON
    batch = c.post("/attention/batch", files=[("images", IMAGE["image"])] * 2).json()
    assert all(r["trained_reason"] == UNTRAINED_REASON for r in batch["results"])
    two = {"image_a": IMAGE["image"], "image_b": IMAGE["image"]}
    assert c.post("/match", files=two).json()["trained_reason"] == UNTRAINED_REASON
    assert c.post("/objects", files=IMAGE).json()["trained_reason"] == UNTRAINED_REASON
    r = c.post("/attention", files=IMAGE, data={"format": "npz"})
    meta = json.loads(str(np.load(io.BytesIO(r.content), allow_pickle=False)["meta"]))
    assert meta["trained"] is False and meta["trained_reason"] == UNTRAINED_REASON
    listed = _models(c)["placeholder_vits16"]
    assert listed["trained_reason"] == UNTRAINED_REASON and listed["status"] == "ready"
    _check_video_job(c, tmp_path)


def _check_video_job(c: TestClient, tmp_path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, 3, 64, 48, fps=6)
    with open(clip, "rb") as fh:
        r = c.post(
            "/attention/video",
            files={"video": ("clip.mp4", fh, "video/mp4")},
            data={"image_size": "64"},
        )
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    for _ in range(300):
        status = c.get(f"/jobs/{job}").json()
        if status["state"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert status["state"] == "done", status
    assert status["params"]["trained_reason"] == UNTRAINED_REASON
    summary = c.get(f"/jobs/{job}/result", params={"format": "json"}).json()
    assert summary["trained"] is False and summary["trained_reason"] == UNTRAINED_REASON
    npz = c.get(f"/jobs/{job}/result", params={"format": "npz"}).content
    meta = json.loads(str(np.load(io.BytesIO(npz), allow_pickle=False)["meta"]))
    assert meta["trained_reason"] == UNTRAINED_REASON


def test_a_file_dropped_in_becomes_the_default_without_a_restart(tmp_path):
    settings = isolated_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/models").json()["default"] == "placeholder_vits16"
        write_tiny_checkpoint(settings.checkpoint_dir, "run_a")  # step 4: the newest file
        assert client.get("/models").json()["default"] == "run_a"
        reply = client.post("/attention", files=IMAGE, data={"overlays": "false"}).json()
        assert reply["model"] == "run_a" and reply["trained_reason"] is None
        assert client.get("/readyz").json()["default_model"] == "run_a"
        write_shipped_checkpoint(settings.checkpoint_dir)  # step 3 outranks step 4
        time.sleep(0.02)
        write_tiny_checkpoint(settings.checkpoint_dir, "run_b")  # newer, but after the shipped
        assert client.get("/models").json()["default"] == SHIPPED_DEFAULT_ID


def test_a_named_default_stays_when_files_arrive(tmp_path):
    settings = isolated_settings(tmp_path, default_model="first")
    write_tiny_checkpoint(settings.checkpoint_dir, "first")
    with TestClient(create_app(settings)) as client:
        write_tiny_checkpoint(settings.checkpoint_dir, "second")
        assert client.get("/models").json()["default"] == "first"  # DINO_DEFAULT_MODEL wins


def test_npz_draws_no_overlays(tmp_path):
    settings = isolated_settings(tmp_path)
    write_tiny_checkpoint(settings.checkpoint_dir)
    with TestClient(create_app(settings)) as client:
        r = client.post("/attention", files=IMAGE, data={"format": "npz", "overlays": "true"})
        meta = json.loads(str(np.load(io.BytesIO(r.content), allow_pickle=False)["meta"]))
    assert meta["timings_ms"]["overlays"] == 0.0


def test_errors_for_a_named_model_are_counted_under_its_id(tmp_path):
    settings = isolated_settings(tmp_path, allow_downloads=False)
    write_tiny_checkpoint(settings.checkpoint_dir)
    with TestClient(create_app(settings)) as client:
        r = client.post("/attention", files=IMAGE, data={"model": "dino_vitb16"})
        assert r.status_code == 503
        client.post("/attention", files=IMAGE, data={"model": "no_such_model"})
        r = client.post("/match", files={"image_a": IMAGE["image"]}, data={"model": "tiny"})
        text = client.get("/metrics").text
    assert (
        'dino_errors_total{code="downloads_disabled",endpoint="/attention",model="dino_vitb16"}'
        in text
    )
    assert 'code="unknown_model",endpoint="/attention",model="unknown"' in text
    assert 'model="no_such_model"' not in text  # labels stay bounded


def test_get_attention_says_use_post(tmp_path):
    settings = isolated_settings(tmp_path)
    write_tiny_checkpoint(settings.checkpoint_dir)
    with TestClient(create_app(settings)) as client:
        r = client.get("/attention")
    assert r.status_code == 405 and "use POST" in r.json()["detail"]
