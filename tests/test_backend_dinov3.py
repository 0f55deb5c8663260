"""DINOv3 in the service: GET /models fields, POST /attention against an explicit reference,
storage tokens in ``register_attention``, the zoo ids, and ConvNeXt / 7B / truncated files.

The models are random, written in the authors' (ViT-S-like, MLP) and timm's (S+-like, SwiGLU)
layouts by tests/dinov3_layouts.py. The reference rows are timm's Eva with fused attention off.
Zoo downloads run against a local HTTP server on 127.0.0.1.
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
from safetensors.torch import save, save_file

from backend.main import create_app
from backend.models.zoo import ZOO
from tests.dinov3_layouts import (
    authors_state,
    convnext_state,
    timm_state,
    tiny_arch,
    write_hf_folder,
)
from tests.service_helpers import image_bytes, isolated_settings, write_tiny_checkpoint
from trainer.model.dinov3 import Dinov3Arch, build_dinov3
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

HEADS = 2


def _seven_b_meta() -> dict[str, torch.Tensor]:
    """The authors' ViT-7B/16 shapes as meta tensors: a file of a few kB, nothing allocated."""
    dim, hidden = 4096, 8192
    with torch.device("meta"):
        state = {
            "patch_embed.proj.weight": torch.empty(dim, 3, 16, 16),
            "cls_token": torch.empty(1, 1, dim),
            "storage_tokens": torch.empty(1, 4, dim),
            "rope_embed.periods": torch.empty(16),
        }
        for i in range(40):
            state[f"blocks.{i}.attn.qkv.weight"] = torch.empty(3 * dim, dim)
            state[f"blocks.{i}.attn.proj.weight"] = torch.empty(dim, dim)
            state[f"blocks.{i}.mlp.w1.weight"] = torch.empty(hidden, dim)
            state[f"blocks.{i}.mlp.w2.weight"] = torch.empty(hidden, dim)
            state[f"blocks.{i}.mlp.w3.weight"] = torch.empty(dim, hidden)
    return state


@pytest.fixture(scope="module")
def weights():
    return {
        "s": (tiny_arch(), authors_state(tiny_arch(), seed=21)),
        "splus": (tiny_arch(glu=True), timm_state(tiny_arch(glu=True), seed=22)),
        "hf": (tiny_arch(), None),
    }


@pytest.fixture(scope="module")
def client(weights, tmp_path_factory):
    settings = isolated_settings(tmp_path_factory.mktemp("dinov3_service"), cache_entries=0)
    folder = settings.checkpoint_dir
    torch.save(weights["s"][1], folder / "dinov3_vits16_pretrain_lvd1689m-test.pth")
    save_file(weights["splus"][1], str(folder / "v3_splus_timm.safetensors"))
    torch.save(convnext_state(), folder / "dinov3_convnext_tiny_pretrain.pth")
    torch.save(_seven_b_meta(), folder / "dinov3_vit7b16_pretrain_lvd1689m.pth")
    data = (folder / "dinov3_vits16_pretrain_lvd1689m-test.pth").read_bytes()
    (folder / "v3_truncated.pth").write_bytes(data[: len(data) // 3])
    write_hf_folder(folder / "v3_hf", tiny_arch(), seed=SEEDS["hf"])
    write_tiny_checkpoint(folder, "dino_tiny")
    with TestClient(create_app(settings)) as c:
        yield c


S_ID = "dinov3_vits16_pretrain_lvd1689m-test"
SEEDS = {"s": 21, "splus": 22, "hf": 23}


def _models(client) -> dict[str, dict]:
    return {m["id"]: m for m in client.get("/models").json()["models"]}


def _post(client, model: str, image: bytes, **data: str) -> dict:
    r = client.post(
        "/attention",
        files={"image": ("a.png", image, "image/png")},
        data={"model": model, "overlays": "false", **data},
    )
    assert r.status_code == 200, r.text
    return r.json()


def _tensor(png: bytes, size: tuple[int, int]) -> torch.Tensor:
    """The service's preprocessing for resize=square (bilinear, ImageNet mean/std)."""
    img = Image.open(io.BytesIO(png)).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    arr = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32)).unsqueeze(0)


def _reference(arch, timm_weights, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """All softmax rows of block ``layer`` from timm's Eva with fused attention off."""
    model = build_dinov3(arch).eval()
    model.load_state_dict(timm_weights)
    seen = {}
    for blk in model.blocks:
        blk.attn.fused_attn = False
    model.blocks[layer].attn.attn_drop.register_forward_hook(
        lambda _m, _i, out: seen.setdefault("a", out)
    )
    with torch.no_grad():
        model.forward_features(x)
    return seen["a"][0]


def test_models_report_family_registers_sizes(client):
    models = _models(client)
    for mid, layout in [(S_ID, "authors"), ("v3_splus_timm", "timm"), ("v3_hf", "transformers")]:
        m = models[mid]
        assert (m["family"], m["registers"], m["patch_size"], m["default_image_size"]) == (
            "dinov3",
            4,
            16,
            448,
        )
        assert m["available"] and m["layout"] == layout and m["num_heads"] == HEADS
    for zoo_id in (
        "dinov3_vits16",
        "dinov3_vits16plus",
        "dinov3_vitb16",
        "dinov3_vitl16",
        "dinov3_vith16plus",
    ):
        assert (models[zoo_id]["family"], models[zoo_id]["registers"]) == ("dinov3", 4)


def test_convnext_7b_truncated_listed_with_reasons(client):
    models = _models(client)
    conv = models["dinov3_convnext_tiny_pretrain"]
    assert not conv["available"] and "ConvNeXt backbones have no attention" in conv["error"]
    big = models["dinov3_vit7b16_pretrain_lvd1689m"]
    assert not big["available"] and "DINO_MAX_PARAMS" in big["error"]
    assert "6,7" in big["error"] and big["family"] == "dinov3"
    assert not models["v3_truncated"]["available"]
    assert "truncated" in models["v3_truncated"]["error"]
    r = client.post(
        "/attention",
        files={"image": ("a.png", image_bytes(40, 40), "image/png")},
        data={"model": "dinov3_vit7b16_pretrain_lvd1689m"},
    )
    assert r.status_code == 503 and "DINO_MAX_PARAMS" in r.json()["detail"]


@pytest.mark.parametrize(
    "model,key,png_size,data",
    [
        (S_ID, "s", (90, 70), {"image_size": "64", "resize": "square"}),
        (S_ID, "s", (96, 48), {"image_size": "48"}),  # already 48 x 96: no resampling
        ("v3_splus_timm", "splus", (90, 70), {"image_size": "64", "resize": "square"}),
        ("v3_splus_timm", "splus", (96, 48), {"image_size": "48"}),
        ("v3_hf", "hf", (96, 48), {"image_size": "48"}),
    ],
)
def test_cls_and_query_rows_equal_unfused_eva(client, weights, model, key, png_size, data):
    arch, _ = weights[key]
    seed = SEEDS[key]
    png = image_bytes(*png_size, seed=3)
    body = _post(client, model, png, query="1,2", **data)
    h, w = body["image_size"]
    gh, gw = h // 16, w // 16
    assert body["grid"] == [gh, gw] and body["family"] == "dinov3" and body["registers"] == 4
    # the served weights are timm_state(seed): the authors' file is its renaming (k bias masked)
    ref = _reference(arch, timm_state(arch, seed=seed), _tensor(png, (w, h)))
    maps, qmaps = np.asarray(body["attentions"]), np.asarray(body["query_attentions"])
    assert maps.shape == (HEADS, gh, gw)
    np.testing.assert_allclose(maps.reshape(HEADS, -1), ref[:, 0, 5:].numpy(), atol=1e-5)
    q = 5 + 1 * gw + 2
    np.testing.assert_allclose(qmaps.reshape(HEADS, -1), ref[:, q, 5:].numpy(), atol=1e-5)
    reg = np.asarray(body["register_attention"])
    np.testing.assert_allclose(reg, ref[:, 0, 1:5].numpy(), atol=1e-5)
    qreg = np.asarray(body["query_register_attention"])
    np.testing.assert_allclose(qreg, ref[:, q, 1:5].numpy(), atol=1e-5)
    np.testing.assert_allclose(maps.sum((1, 2)) + reg.sum(1), 1 - ref[:, 0, 0].numpy(), atol=1e-5)


def test_default_image_size_is_448(client):
    body = _post(client, S_ID, image_bytes(64, 64, seed=5))
    assert body["image_size"] == [448, 448] and body["grid"] == [28, 28]


def test_layer_composite_pca_work_for_dinov3(client):
    body = _post(
        client,
        S_ID,
        image_bytes(64, 64, seed=4),
        image_size="64",
        resize="square",
        layer="0",
        composite="true",
        pca="true",
    )
    assert body["layer"] == 0 and np.asarray(body["pca_rgb"]).shape == (4, 4, 3)
    assert len(body["composite_colors"]) == HEADS


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


def test_zoo_ids_hold_timms_public_urls(monkeypatch):
    monkeypatch.delenv("DINO_DINOV3_DOWNLOAD_BASE_URL", raising=False)
    hub = "https://huggingface.co/timm"
    names = {
        "dinov3_vits16": "vit_small_patch16_dinov3",
        "dinov3_vits16plus": "vit_small_plus_patch16_dinov3",
        "dinov3_vitb16": "vit_base_patch16_dinov3",
        "dinov3_vitl16": "vit_large_patch16_dinov3",
        "dinov3_vith16plus": "vit_huge_plus_patch16_dinov3",
    }
    for zoo_id, name in names.items():
        url = f"{hub}/{name}.lvd1689m/resolve/main/model.safetensors"
        assert ZOO[zoo_id].url("unused") == url


def test_zoo_download_on_first_use(tmp_path, monkeypatch):
    arch = Dinov3Arch(384, 1, 6, 1536, glu=False, qkv_bias=False)  # a one-block "ViT-S/16"
    body_bytes = save({k: v.contiguous() for k, v in timm_state(arch, seed=31).items()})
    path = "/timm/vit_small_patch16_dinov3.lvd1689m/resolve/main/model.safetensors"
    mirror = _Mirror({path: body_bytes})
    monkeypatch.setenv("DINO_DINOV3_DOWNLOAD_BASE_URL", mirror.url + "/timm")
    try:
        settings = isolated_settings(tmp_path, allow_downloads=True, default_model="dino_tiny")
        write_tiny_checkpoint(settings.checkpoint_dir, "dino_tiny")
        with TestClient(create_app(settings)) as c:
            body = _post(c, "dinov3_vits16", image_bytes(48, 48), image_size="48")
            assert (body["family"], body["registers"], len(body["register_attention"])) == (
                "dinov3",
                4,
                6,
            )
            assert mirror.hits == [path]
            assert (settings.cache_dir / "vit_small_patch16_dinov3.lvd1689m.safetensors").is_file()
            r = c.post(
                "/attention",
                files={"image": ("a.png", image_bytes(48, 48), "image/png")},
                data={"model": "dinov3_vitb16"},
            )
            assert r.status_code == 503 and "could not download dinov3_vitb16" in r.json()["detail"]
    finally:
        mirror.httpd.shutdown()
