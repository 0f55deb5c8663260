"""POST /match and POST /objects against references written here from the papers' equations."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from backend.main import create_app
from tests.service_helpers import drawn_scene, isolated_settings, png_bytes, write_tiny_checkpoint

SIZE = 64  # keep_aspect short side; the drawn scenes are 96x64 and 80x64 -> grids 8x12, 8x10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = isolated_settings(tmp_path_factory.mktemp("discovery"), default_model="tiny")
    _, model = write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        yield c, model.eval()


def _files(**images: Image.Image) -> dict:
    return {k: (f"{k}.png", png_bytes(v), "image/png") for k, v in images.items()}


def _reference_keys(model: torch.nn.Module, img: Image.Image) -> torch.Tensor:
    """Last-block keys of the patches, heads concatenated, by a hook on ``qkv`` (Amir et al.)."""
    from backend.analysis.images import prepare

    x = prepare(img, SIZE, "keep_aspect", 8, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).tensor
    seen = {}
    hook = model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: seen.update(o=o))
    with torch.no_grad():
        model(x)
    hook.remove()
    qkv = seen["o"][0]  # tokens, 3 * dim
    dim = qkv.shape[-1] // 3
    return qkv[1:, dim : 2 * dim]  # drop CLS; the key third


def test_match_equals_the_explicit_cosine_and_best_buddies(setup):
    c, model = setup
    a, b = drawn_scene(96, 64), drawn_scene(80, 64).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    r = c.post(
        "/match",
        files=_files(image_a=a, image_b=b),
        data={"query": "3,4", "top_k": "20", "image_size": "64"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["grid_a"] == [8, 12] and body["grid_b"] == [8, 10] and body["facet"] == "key"
    ka, kb = _reference_keys(model, a), _reference_keys(model, b)
    na, nb = torch.nn.functional.normalize(ka, dim=-1), torch.nn.functional.normalize(kb, dim=-1)
    cos = na @ nb.T
    expected = cos[3 * 12 + 4].reshape(8, 10).numpy()
    np.testing.assert_allclose(np.asarray(body["similarity"]), expected, atol=1e-4)
    ab, ba = cos.argmax(1), cos.argmax(0)
    buddies = sorted(
        ((float(cos[i, ab[i]]), i, int(ab[i])) for i in range(len(ab)) if int(ba[ab[i]]) == i),
        reverse=True,
    )[:20]
    got = [
        (round(m[0]) * 12 + round(m[1]), round(m[2]) * 10 + round(m[3])) for m in body["matches"]
    ]
    assert got == [(i, j) for _, i, j in buddies]
    assert [m[4] for m in body["matches"]] == pytest.approx([v for v, _, _ in buddies], abs=1e-4)


def test_a_new_query_on_the_same_pair_runs_no_model(setup):
    c, _ = setup
    files = _files(image_a=drawn_scene(72, 64), image_b=drawn_scene(88, 64))
    step = c.app.state.service.step
    runs, real = [], step.run
    step.run = lambda *a, **k: runs.append(1) or real(*a, **k)
    try:
        c.post("/match", files=files, data={"query": "0,0", "image_size": "64"}).raise_for_status()
        assert len(runs) == 2  # one feature extraction per image
        r = c.post(
            "/match",
            files=files,
            data={"query": "5,5", "top_k": "3", "overlay": "true", "image_size": "64"},
        )
    finally:
        step.run = real
    assert r.status_code == 200 and len(runs) == 2 and len(r.json()["matches"]) <= 3
    Image.open(io.BytesIO(__import__("base64").b64decode(r.json()["overlay"]))).verify()


@pytest.mark.parametrize(
    ("data", "files", "needle"),
    [
        ({"query": "40,0"}, ("image_a", "image_b"), "outside image A's 8x12 patch grid"),
        ({"facet": "pixels"}, ("image_a", "image_b"), "key, query, value, token"),
        ({}, ("image_a",), "image_b missing"),
        ({"top_k": "0"}, ("image_a", "image_b"), "from 1 to 200"),
    ],
)
def test_match_bad_input_says_what_is_allowed(setup, data, files, needle):
    c, _ = setup
    imgs = {"image_a": drawn_scene(96, 64), "image_b": drawn_scene(96, 64)}
    r = c.post(
        "/match", files=_files(**{k: imgs[k] for k in files}), data={"image_size": "64", **data}
    )
    assert r.status_code == 422 and needle in r.json()["detail"], r.json()


def test_objects_gives_a_box_in_uploaded_pixels_and_its_iou(setup):
    c, _ = setup
    scene = drawn_scene(192, 128)  # twice the processed size: boxes scale by 2
    mask = Image.new("L", scene.size, 0)
    mask.paste(255, (40, 30, 120, 100))
    r = c.post("/objects", files=_files(image=scene, gt_mask=mask), data={"image_size": "64"})
    assert r.status_code == 200, r.text
    body = r.json()
    x0, y0, x1, y1 = body["boxes"][0]
    assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 128
    assert x0 % 16 == 0 and y0 % 16 == 0  # patch 8 at half the upload size
    assert body["gt_box"] == [40, 30, 120, 100] and 0 <= body["box_iou"] <= 1
    rows, cols = body["grid"]
    assert (rows, cols) == (8, 12) and np.asarray(body["mask"])[tuple(body["seed"])] == 1
    assert body["method"] == "lost" and body["overlay"]
    bad = c.post("/objects", files=_files(image=scene), data={"method": "sam"})
    assert bad.status_code == 422 and "lost or tokencut" in bad.json()["detail"]
