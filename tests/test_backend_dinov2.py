"""DINOv2 in the service: GET /models fields, default sizes, register attention, zoo ids, bad files.

The models are random and written in the authors' and transformers' layouts by hand
(tests/dinov2_layouts.py); the reference CLS rows come from the authors' forward pass written
in the tests. Zoo downloads run against a local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from backend.main import create_app
from backend.models.zoo import ZOO
from tests.dinov2_layouts import authors_state, ref_attention, write_hf_folder
from tests.service_helpers import image_bytes, isolated_settings, write_tiny_checkpoint
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

DIM, DEPTH, HEADS = 128, 2, 2


@pytest.fixture(scope="module")
def weights():
    return {
        "plain": authors_state(DIM, DEPTH, 0, seed=11),
        "reg": authors_state(DIM, DEPTH, 4, seed=12),
    }


@pytest.fixture(scope="module")
def client(weights, tmp_path_factory):
    settings = isolated_settings(tmp_path_factory.mktemp("dinov2_service"), cache_entries=0)
    folder = settings.checkpoint_dir
    torch.save(weights["plain"], folder / "v2_plain.pth")
    write_hf_folder(folder / "v2_reg_hf", weights["reg"], HEADS)
    write_tiny_checkpoint(folder, "dino_tiny")
    data = (folder / "v2_plain.pth").read_bytes()
    (folder / "v2_truncated.pth").write_bytes(data[: len(data) // 3])
    broken = folder / "not_dinov2"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "vit"}')
    with TestClient(create_app(settings)) as c:
        yield c


def _models(client) -> dict[str, dict]:
    return {m["id"]: m for m in client.get("/models").json()["models"]}


def test_models_report_family_registers_sizes(client):
    models = _models(client)
    fields = (
        "family",
        "registers",
        "default_image_size",
        "patch_size",
        "num_heads",
        "available",
        "layout",
    )
    assert {k: models["v2_plain"][k] for k in fields} == {
        "family": "dinov2",
        "registers": 0,
        "default_image_size": 518,
        "patch_size": 14,
        "num_heads": HEADS,
        "available": True,
        "layout": "authors",
    }
    assert {k: models["v2_reg_hf"][k] for k in fields} == {
        "family": "dinov2",
        "registers": 4,
        "default_image_size": 518,
        "patch_size": 14,
        "num_heads": HEADS,
        "available": True,
        "layout": "transformers",
    }
    assert (models["dino_tiny"]["family"], models["dino_tiny"]["default_image_size"]) == (
        "dino",
        480,
    )
    for zoo_id, registers in [
        ("dinov2_vits14", 0),
        ("dinov2_vits14_reg", 4),
        ("dinov2_vitb14", 0),
        ("dinov2_vitb14_reg", 4),
    ]:
        assert (
            models[zoo_id]["family"],
            models[zoo_id]["registers"],
            models[zoo_id]["patch_size"],
        ) == ("dinov2", registers, 14)


def test_bad_files_are_listed_with_their_reason(client):
    models = _models(client)
    truncated, broken = models["v2_truncated"], models["not_dinov2"]
    assert truncated["available"] is False and "truncated" in truncated["error"]
    assert (
        broken["available"] is False
        and "supported: dinov2, dinov2_with_registers" in broken["error"]
    )
    r = client.post(
        "/attention",
        files={"image": ("a.png", image_bytes(40, 40), "image/png")},
        data={"model": "v2_truncated"},
    )
    assert r.status_code == 503 and "truncated" in r.json()["detail"]


def _post(client, model: str, image: bytes, **data: str) -> dict:
    r = client.post(
        "/attention",
        files={"image": ("a.png", image, "image/png")},
        data={"model": model, "overlays": "false", **data},
    )
    assert r.status_code == 200, r.text
    return r.json()


def _tensor(png: bytes, size: tuple[int, int]) -> torch.Tensor:
    """The service's preprocessing for resize=square, written out (bilinear, ImageNet mean/std)."""
    img = Image.open(io.BytesIO(png)).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    arr = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32)).unsqueeze(0)


def test_default_image_size_follows_the_model(client):
    png = image_bytes(300, 200)
    assert _post(client, "v2_plain", png)["image_size"] == [
        518,
        770,
    ]  # 518 x 777 cropped to multiples of 14
    assert _post(client, "v2_plain", png)["grid"] == [37, 55]
    assert _post(client, "dino_tiny", png)["image_size"] == [480, 720]
    assert _post(client, "v2_plain", png, image_size="200")["image_size"] == [196, 294]


@pytest.mark.parametrize("model,key", [("v2_reg_hf", "reg"), ("v2_plain", "plain")])
def test_register_attention_and_patch_maps_hold_the_cls_rows_mass(client, weights, model, key):
    png = image_bytes(90, 70, seed=3)
    body = _post(client, model, png, image_size="238", resize="square", query="5,9")
    ref = ref_attention(weights[key], _tensor(png, (238, 238)), HEADS)[0]  # heads, T, T
    registers = 4 if key == "reg" else 0
    query_token = 1 + registers + 5 * 17 + 9
    maps, qmaps = np.asarray(body["attentions"]), np.asarray(body["query_attentions"])
    assert body["registers"] == registers and maps.shape == (HEADS, 17, 17)
    np.testing.assert_allclose(
        maps.reshape(HEADS, -1), ref[:, 0, 1 + registers :].numpy(), atol=1e-5
    )
    if registers:
        reg, qreg = (
            np.asarray(body["register_attention"]),
            np.asarray(body["query_register_attention"]),
        )
        assert reg.shape == qreg.shape == (HEADS, registers)
        np.testing.assert_allclose(reg, ref[:, 0, 1 : 1 + registers].numpy(), atol=1e-5)
        np.testing.assert_allclose(qreg, ref[:, query_token, 1 : 1 + registers].numpy(), atol=1e-5)
    else:
        assert body["register_attention"] is None and body["query_register_attention"] is None
        reg = qreg = np.zeros((HEADS, 0))
    # per head: patches + registers = 1 - the row's attention to the CLS token
    np.testing.assert_allclose(maps.sum((1, 2)) + reg.sum(1), 1 - ref[:, 0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(
        qmaps.sum((1, 2)) + qreg.sum(1), 1 - ref[:, query_token, 0].numpy(), atol=1e-5
    )


def test_explorer_features_work_for_dinov2(client, weights):
    """layer, query, composite and PCA on a register model: patch maps and registers of block 0."""
    png = image_bytes(80, 80, seed=4)
    body = _post(
        client,
        "v2_reg_hf",
        png,
        image_size="140",
        resize="square",
        layer="0",
        query="2,7",
        composite="true",
        pca="true",
    )
    ref = ref_attention(weights["reg"], _tensor(png, (140, 140)), HEADS, layer=0)[0]
    query_token = 1 + 4 + 2 * 10 + 7
    assert body["layer"] == 0 and np.asarray(body["pca_rgb"]).shape == (10, 10, 3)
    assert len(body["composite_colors"]) == HEADS
    np.testing.assert_allclose(
        np.asarray(body["attentions"]).reshape(HEADS, -1), ref[:, 0, 5:].numpy(), atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(body["query_attentions"]).reshape(HEADS, -1),
        ref[:, query_token, 5:].numpy(),
        atol=1e-5,
    )
    np.testing.assert_allclose(body["register_attention"], ref[:, 0, 1:5].numpy(), atol=1e-5)


def test_npz_holds_register_attention(client):
    r = client.post(
        "/attention",
        files={"image": ("a.png", image_bytes(60, 60), "image/png")},
        data={"model": "v2_reg_hf", "format": "npz", "image_size": "140"},
    )
    npz = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert npz["register_attention"].shape == (HEADS, 4) and npz["attentions"].shape == (
        HEADS,
        10,
        10,
    )
    r = client.post(
        "/attention",
        files={"image": ("a.png", image_bytes(60, 60), "image/png")},
        data={"model": "v2_plain", "format": "npz", "image_size": "140"},
    )
    assert np.load(io.BytesIO(r.content), allow_pickle=False)["register_attention"].shape == (
        HEADS,
        0,
    )


class _Mirror:
    """Serves files by URL path on 127.0.0.1; unknown paths are 404."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.hits = files, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server naming
                outer.hits.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_zoo_ids_hold_the_authors_urls():
    base = "https://dl.fbaipublicfiles.com/dinov2"
    assert {
        k: ZOO[k].url("unused")
        for k in ("dinov2_vits14", "dinov2_vits14_reg", "dinov2_vitb14", "dinov2_vitb14_reg")
    } == {
        "dinov2_vits14": f"{base}/dinov2_vits14/dinov2_vits14_pretrain.pth",
        "dinov2_vits14_reg": f"{base}/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
        "dinov2_vitb14": f"{base}/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
        "dinov2_vitb14_reg": f"{base}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    }


def test_zoo_download_on_first_use_and_503_when_impossible(tmp_path):
    buf = io.BytesIO()
    torch.save(authors_state(384, 1, 4, seed=13), buf)  # a one-block "ViT-S/14 with 4 registers"
    mirror = _Mirror({"/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth": buf.getvalue()})
    try:
        settings = isolated_settings(
            tmp_path / "on",
            allow_downloads=True,
            default_model="dino_tiny",
            dinov2_download_base_url=mirror.url + "/dinov2",
        )
        write_tiny_checkpoint(settings.checkpoint_dir, "dino_tiny")
        with TestClient(create_app(settings)) as c:
            body = _post(c, "dinov2_vits14_reg", image_bytes(50, 50), image_size="56")
            assert (body["registers"], body["family"], len(body["register_attention"])) == (
                4,
                "dinov2",
                6,
            )
            assert mirror.hits == ["/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"]
            assert (settings.cache_dir / "dinov2_vits14_reg4_pretrain.pth").is_file()
            r = c.post(
                "/attention",
                files={"image": ("a.png", image_bytes(50, 50), "image/png")},
                data={"model": "dinov2_vitb14"},
            )  # not on the mirror
            assert r.status_code == 503 and "could not download dinov2_vitb14" in r.json()["detail"]
        off = isolated_settings(tmp_path / "off", default_model="dino_tiny")
        write_tiny_checkpoint(off.checkpoint_dir, "dino_tiny")
        with TestClient(create_app(off)) as c:
            r = c.post(
                "/attention",
                files={"image": ("a.png", image_bytes(50, 50), "image/png")},
                data={"model": "dinov2_vits14"},
            )
            assert r.status_code == 503 and "downloads are off" in r.json()["detail"]
    finally:
        mirror.httpd.shutdown()
