"""The REST contract of docs/API.md through FastAPI's TestClient."""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.analysis.model_step import Cancelled, ModelStep
from backend.main import create_app
from tests.service_helpers import (
    bad_input_cases,
    image_bytes,
    isolated_settings,
    write_tiny_checkpoint,
)

LIMITS = {"max_upload_mb": 0.2, "max_pixels": 1_000_000, "max_image_size": 1024}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = isolated_settings(tmp_path_factory.mktemp("api"), **LIMITS)
    write_tiny_checkpoint(settings.checkpoint_dir, "tiny")
    write_tiny_checkpoint(settings.checkpoint_dir, "tiny16", seed=1, patch_size=16, embed_dim=128)
    (settings.checkpoint_dir / "broken.pth").write_bytes(b"not a checkpoint")
    with TestClient(create_app(settings)) as c:
        yield c


def _post(client, **kw):
    return client.post("/attention", **kw)


def _one(png=None, **data):
    data.setdefault("model", "tiny")
    return {
        "files": {"image": ("a.png", png or image_bytes(64, 48), "image/png")},
        "data": {k: str(v) for k, v in data.items()},
    }


@pytest.mark.parametrize("case", bad_input_cases(int(0.2 * 2**20), 1_000_000), ids=lambda c: c[0])
def test_bad_input_is_a_readable_4xx(client, case):
    _, kwargs, status = case
    r = _post(client, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail", "code"} and len(body["detail"]) > 10
    assert "Traceback" not in r.text


def test_unknown_model_lists_ids(client):
    r = _post(client, **_one(model="nope"))
    assert (
        r.status_code == 404
        and "tiny16" in r.json()["detail"]
        and "dino_vits16" in r.json()["detail"]
    )


def test_empty_model_field_means_default(client):
    r = client.post(
        "/attention",
        files={"image": ("a.png", image_bytes(), "image/png")},
        data={"model": "", "image_size": "32", "overlays": "false"},
    )
    assert r.status_code == 200 and r.json()["model"] == client.get("/models").json()["default"]


def test_threshold_message_says_what_is_allowed(client):
    r = _post(client, **_one(threshold=2))
    assert r.status_code == 422 and "0 < threshold <= 1" in r.json()["detail"]


def test_json_response_fields_and_invariants(client):
    r = _post(client, **_one(threshold=0.6))
    assert r.status_code == 200, r.text
    b = r.json()
    assert (
        b["model"] == "tiny"
        and b["patch_size"] == 8
        and b["num_heads"] == 1
        and b["trained"] is True
    )
    # keep_aspect: short side 480 -> 640x480, already patch multiples
    assert b["image_size"] == [480, 640] and b["grid"] == [60, 80]
    att = np.asarray(b["attentions"])
    assert att.shape == (1, 60, 80) and np.all(att > 0) and att.sum() < 1.0  # CLS column dropped
    np.testing.assert_allclose(b["mean_attention"], att.mean(0), atol=1e-7)
    masks = np.asarray(b["masks"])
    assert set(np.unique(masks)) <= {0, 1}
    kept_mass = (att * masks).sum() / att.sum()
    assert kept_mass >= 0.6 - 1e-6
    smallest_dropped = np.sort(att[masks == 0])
    assert (
        kept_mass - att[masks == 1].min() / att.sum() < 0.6 + 1e-6
    )  # minimal: dropping one breaks it
    assert smallest_dropped.size == 0 or smallest_dropped.max() <= att[masks == 1].min() + 1e-12
    assert b["coverage"] == pytest.approx([masks.mean()])
    assert b["params"] == {
        "image_size": 480,
        "resize": "keep_aspect",
        "threshold": 0.6,
        "overlays": True,
        "format": "json",
        "layer": -1,
        "query": None,
        "composite": False,
        "heads": None,
        "pca": False,
        "overlay_format": "png",
        "precision": "fp32",
    }
    assert b["precision"] == "fp32"  # the default keeps the authors' numbers
    assert set(b["timings_ms"]) == {
        "decode",
        "preprocess",
        "model",
        "postprocess",
        "overlays",
        "total",
    }
    assert (
        b["layer"] == b["depth"] - 1 and b["cached"] is False and b["overlay_mime"] == "image/png"
    )
    ov = b["overlays"]
    for png in [ov["image"], ov["mean"], *ov["heads"], *ov["masks"]]:
        assert Image.open(io.BytesIO(base64.b64decode(png))).size == (640, 480)


def test_json_body_with_base64_and_other_model(client):
    data = base64.b64encode(image_bytes(50, 50)).decode()
    r = client.post(
        "/attention",
        json={
            "image": f"data:image/png;base64,{data}",
            "model": "tiny16",
            "image_size": 70,
            "resize": "square",
            "overlays": False,
        },
    )
    assert r.status_code == 200, r.text
    b = r.json()
    assert (
        b["model"] == "tiny16"
        and b["grid"] == [4, 4]
        and b["image_size"] == [64, 64]
        and "overlays" not in b
    )


def test_gt_mask_iou_and_best_head(client):
    img = Image.new("RGB", (64, 64), "white")
    gt = np.zeros((64, 64), np.uint8)
    gt[:32] = 255
    buf = io.BytesIO()
    Image.fromarray(gt).resize((32, 32), Image.Resampling.NEAREST).save(
        buf, format="PNG"
    )  # same aspect
    files = {
        "image": ("a.png", _png(img), "image/png"),
        "gt_mask": ("m.png", buf.getvalue(), "image/png"),
    }
    r = _post(client, files=files, data={"image_size": "64", "overlays": "false", "model": "tiny"})
    assert r.status_code == 200, r.text
    b = r.json()
    masks = np.asarray(b["masks"], bool).repeat(8, 1).repeat(8, 2)
    gt_bool = gt > 127
    expected = (masks & gt_bool).sum((1, 2)) / (masks | gt_bool).sum((1, 2))
    np.testing.assert_allclose(b["iou"], expected, atol=1e-6)
    assert b["best_head"] == int(np.argmax(expected)) and b["best_iou"] == pytest.approx(
        expected.max()
    )


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_npz_download(client):
    r = _post(client, **_one(format="npz", overlays="false", image_size=64))
    assert r.status_code == 200
    assert r.headers["content-disposition"] == "attachment; filename=attention_tiny.npz"
    z = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert z["attentions"].shape == (1, 8, 10) and z["masks"].dtype == np.uint8
    meta = json.loads(str(z["meta"]))
    assert meta["model"] == "tiny" and meta["grid"] == [8, 10]
    np.testing.assert_allclose(z["mean_attention"], z["attentions"].mean(0), atol=1e-7)


def test_batch(client):
    files = [
        ("images", (f"{i}.png", image_bytes(40 + 20 * i, 40, seed=i), "image/png"))
        for i in range(3)
    ]
    r = client.post(
        "/attention/batch",
        files=files,
        data={"image_size": "32", "overlays": "false", "model": "tiny"},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["grid"] for res in results] == [[4, 4], [4, 6], [4, 8]]
    single = _post(
        client,
        files={"image": ("1.png", image_bytes(60, 40, seed=1), "image/png")},
        data={"image_size": "32", "overlays": "false", "model": "tiny"},
    ).json()
    np.testing.assert_allclose(results[1]["attentions"], single["attentions"], atol=1e-6)


def test_batch_limit_is_16(client):
    png = image_bytes(16, 16)
    ok = client.post(
        "/attention/batch",
        json={"images": [base64.b64encode(png).decode()] * 16, "image_size": 16, "overlays": False},
    )
    assert ok.status_code == 200 and len(ok.json()["results"]) == 16
    files = [("images", (f"{i}.png", png, "image/png")) for i in range(17)]
    r = client.post("/attention/batch", files=files)
    assert r.status_code == 422 and "1 to 16" in r.json()["detail"]
    bad = client.post(
        "/attention/batch",
        files=[
            ("images", ("a.png", png, "image/png")),
            ("images", ("b.png", b"junk", "image/png")),
        ],
    )
    assert bad.status_code == 415 and bad.json()["detail"].startswith("images[1]")


def test_models_health_ready_metrics(client):
    models = client.get("/models").json()
    assert models["default"] == "tiny16"  # newest file in the folder
    by_id = {m["id"]: m for m in models["models"]}
    assert (
        by_id["tiny"]["available"]
        and by_id["tiny"]["arch"] == "vit_d64"
        and by_id["tiny"]["patch_size"] == 8
    )
    assert not by_id["broken"]["available"] and "broken.pth" in by_id["broken"]["error"]
    assert {"dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8"} <= set(by_id)
    assert set(by_id["tiny"]) >= {
        "id",
        "arch",
        "patch_size",
        "num_heads",
        "source",
        "loaded",
        "available",
        "trained",
        "error",
    }
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "default_model": "tiny16"}
    _post(client, **_one(image_size=32, overlays="false"))
    _post(client, **_one(threshold=7))
    text = client.get("/metrics").text
    assert (
        'dino_requests_total{endpoint="/attention",method="POST",model="tiny",status="200"}' in text
    )
    assert (
        "dino_request_latency_seconds_bucket" in text
        and 'dino_inference_seconds_count{model="tiny"}' in text
    )
    assert 'dino_errors_total{code="invalid_parameter",endpoint="/attention",model=""}' in text


def test_sixteen_concurrent_clients_no_errors(client):
    statuses, errors = [], []

    def worker(i):
        try:
            r = _post(client, **_one(image_bytes(48, 40, seed=i), image_size=48, overlays="false"))
            statuses.append(r.status_code)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and statuses == [200] * 16


def test_busy_semaphore_gives_503_with_retry_after():
    step = ModelStep(max_concurrency=1, queue_timeout_s=0.05)
    with step.slot():
        with pytest.raises(Exception) as info:
            with step.slot():
                pass
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "1"
    with step.slot():  # released again
        pass


def test_a_background_slot_waits_and_stops_when_cancelled():
    import threading

    step = ModelStep(max_concurrency=1, queue_timeout_s=0.01)
    cancel = threading.Event()
    with step.slot():
        cancel.set()
        with pytest.raises(Cancelled):
            with step.slot(cancel):
                pass
    with step.slot(threading.Event()):  # free again: a waiting job gets it at once
        pass


def test_bf16_precision_is_close_to_fp32():
    """The real model step (``ModelStep.run`` + ``compute_block_maps``) in both precisions."""
    from types import SimpleNamespace

    import torch

    from backend.analysis.block_maps import compute_block_maps
    from tests.service_helpers import tiny_vit

    model = tiny_vit(3).eval()
    loaded = SimpleNamespace(model=model, device=torch.device("cpu"), entry=SimpleNamespace(id="m"))
    x = torch.randn(1, 3, 48, 64)

    def cls_maps(precision: str) -> torch.Tensor:
        step = ModelStep(1, 1.0, precision)
        last = len(model.blocks) - 1
        raw = step.run(loaded, lambda m, d: compute_block_maps(m, x, last, None, False))
        return torch.from_numpy(raw.cls_maps())

    fp32, bf16 = cls_maps("fp32"), cls_maps("bf16")
    assert fp32.dtype == bf16.dtype == torch.float32 and fp32.shape[1:] == (6, 8)
    assert torch.allclose(fp32.sum((-2, -1)), bf16.sum((-2, -1)), atol=2e-2)
    assert (fp32 - bf16).abs().max() < 0.05 * fp32.max()
    with pytest.raises(ValueError, match="choose one of auto, fp32, bf16, int8"):
        ModelStep(1, 1.0, "fp16")


def test_unknown_route_and_method_are_json(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = client.get("/attention")
    assert r.status_code == 405 and "detail" in r.json()


def test_request_body_limit_without_content_length(tmp_path):
    settings = isolated_settings(tmp_path, max_request_mb=0.25)
    write_tiny_checkpoint(settings.checkpoint_dir)

    def chunks():
        for _ in range(10):
            yield b"x" * 65536

    with TestClient(create_app(settings)) as c:
        for ctype in ("application/json", "multipart/form-data; boundary=abc"):
            r = c.post("/attention", content=chunks(), headers={"content-type": ctype})
            assert r.status_code == 413 and r.json()["code"] == "request_too_large"
            assert r.headers["x-error-code"] == "request_too_large"
        assert 'code="request_too_large"' in c.get("/metrics").text


def test_saturated_service_answers_503_with_retry_after(tmp_path):
    settings = isolated_settings(tmp_path, max_concurrency=1, queue_timeout_s=0.1)
    write_tiny_checkpoint(settings.checkpoint_dir)
    app = create_app(settings)
    with TestClient(app) as c:
        with app.state.service.step.slot():  # someone else holds the only slot
            r = _post(c, **_one(image_size=32))
        assert (
            r.status_code == 503
            and r.json()["code"] == "busy"
            and int(r.headers["retry-after"]) >= 1
        )
        assert _post(c, **_one(image_size=32)).status_code == 200
