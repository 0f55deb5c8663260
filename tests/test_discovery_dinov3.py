"""Matching and object discovery on DINOv3 (timm ``Eva`` with RoPE), against references here.

The reference facets come from timm's own Eva forward: a hook on the last block's ``norm1``
gives its input, and the key / query / value rows are that input times the block's fused
``qkv`` weight plus its bias (the masked k bias is zero), before any rotary embedding; the
storage tokens and CLS are dropped. The token facet is the last block's output after the norm.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient

from backend.analysis.images import prepare
from backend.main import create_app
from tests.dinov3_layouts import authors_state, tiny_arch
from tests.service_helpers import drawn_scene, isolated_settings, png_bytes
from tests.test_lost import loop_lost
from tests.test_matching import loop_best_buddies
from trainer.model.dinov3 import build_dinov3
from trainer.model.facets import block_facet
from trainer.model.lost import lost
from trainer.model.tokencut import tokencut

SIZE = 64  # keep_aspect short side: 96x64 -> grid 4x6, 80x64 -> 4x5 (patch 16)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREFIX = 5  # CLS + 4 storage tokens


@pytest.fixture(scope="module")
def eva():
    model = build_dinov3(tiny_arch()).eval()
    model.load_state_dict(authors_state_as_timm())
    return model


def authors_state_as_timm() -> dict[str, torch.Tensor]:
    from timm.models.eva import checkpoint_filter_fn

    base = build_dinov3(tiny_arch())
    return checkpoint_filter_fn(authors_state(tiny_arch(), seed=31), base)


def reference_facet(model: torch.nn.Module, x: torch.Tensor, facet: str) -> torch.Tensor:
    """The last block's ``facet`` rows of the patches from timm's own Eva forward."""
    seen = {}
    block = model.blocks[-1]
    hook = block.norm1.register_forward_hook(lambda _m, _i, out: seen.setdefault("h", out))
    with torch.no_grad():
        tokens = model.forward_features(x)
    hook.remove()
    if facet == "token":
        return tokens[0, PREFIX:]
    attn = block.attn
    with torch.no_grad():
        bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = seen["h"][0] @ attn.qkv.weight.T + bias
    dim = qkv.shape[-1] // 3
    part = {"query": 0, "key": 1, "value": 2}[facet]
    return qkv[PREFIX:, part * dim : (part + 1) * dim]


@pytest.mark.parametrize("facet", ["key", "query", "value", "token"])
def test_dinov3_facets_equal_timm_forward(eva, facet: str) -> None:
    x = torch.randn(1, 3, 48, 80)
    got = block_facet(eva, x, -1, facet)[0]
    assert got.shape == (3 * 5, eva.embed_dim)
    torch.testing.assert_close(got, reference_facet(eva, x, facet), atol=1e-5, rtol=1e-5)


def test_dinov3_lost_and_tokencut_run_on_the_keys(eva) -> None:
    x = torch.randn(1, 3, 64, 96)
    keys = reference_facet(eva, x, "key").double().tolist()
    seed, seed_set, patch_box = loop_lost(keys, 4, 6, 100)
    result = lost(eva, x)
    assert (result.seed, result.seed_set, result.patch_box) == (seed, seed_set, patch_box)
    cut = tokencut(eva, x)
    assert cut.mask.shape == (4, 6) and cut.mask[cut.seed].item()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    s = isolated_settings(tmp_path_factory.mktemp("discovery_v3"), default_model="v3")
    torch.save(authors_state(tiny_arch(), seed=31), s.checkpoint_dir / "v3.pth")
    with TestClient(create_app(s)) as c:
        yield c


def _tensor(img) -> torch.Tensor:
    return prepare(img, SIZE, "keep_aspect", 16, MEAN, STD).tensor


def test_match_on_dinov3_equals_the_reference(client, eva) -> None:
    a, b = drawn_scene(96, 64), drawn_scene(80, 64)
    files = {
        "image_a": ("a.png", png_bytes(a), "image/png"),
        "image_b": ("b.png", png_bytes(b), "image/png"),
    }
    data = {"model": "v3", "query": "2,3", "top_k": "20", "image_size": str(SIZE)}
    r = client.post("/match", files=files, data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["family"] == "dinov3" and body["grid_a"] == [4, 6] and body["grid_b"] == [4, 5]
    ka = reference_facet(eva, _tensor(a), "key")
    kb = reference_facet(eva, _tensor(b), "key")
    cos = F.normalize(ka, dim=-1) @ F.normalize(kb, dim=-1).T
    np.testing.assert_allclose(body["similarity"], cos[2 * 6 + 3].reshape(4, 5), atol=1e-4)
    expected = loop_best_buddies(ka, kb)[:20]
    got = [(ra * 6 + ca, rb * 5 + cb) for ra, ca, rb, cb, _ in body["matches"]]
    assert got == [(i, j) for i, j, _ in expected]


def test_objects_on_dinov3_gives_the_lost_box(client, eva) -> None:
    img = drawn_scene(96, 64)
    r = client.post(
        "/objects",
        files={"image": ("a.png", png_bytes(img), "image/png")},
        data={"model": "v3", "image_size": str(SIZE), "overlay": "false"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    keys = reference_facet(eva, _tensor(img), "key").double().tolist()
    seed, _, patch_box = loop_lost(keys, 4, 6, 100)
    assert tuple(body["seed"]) == seed
    assert body["boxes"] == [[float(v * 16) for v in patch_box]]
