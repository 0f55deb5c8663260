"""POST /attention's explorer fields: range errors, map cache, overlay formats, composite."""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from backend.analysis.map_cache import MapCache
from backend.analysis.overlay_render import QUERY_MARK_RGB, heat_batch, mask_batch
from backend.main import create_app
from tests.service_helpers import image_bytes, isolated_settings
from trainer.model.attention_maps import heat_overlay, mask_overlay, upsample_nearest
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import build_vit

PATCH, DEPTH, HEADS = 8, 3, 3
IMG = image_bytes(80, 48, seed=3)  # keep_aspect at image_size 48: 80x48 -> grid 6 x 10


def _write_model(path, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_vit(patch_size=PATCH, embed_dim=48, depth=DEPTH, num_heads=HEADS)
    with torch.no_grad():
        model.blocks[-1].attn.qkv.weight.mul_(6.0)
    export_backbone_safetensors(model, path, arch="vit_t48", epoch=1)


@pytest.fixture()
def service(tmp_path):
    settings = isolated_settings(tmp_path, default_model="m", cache_entries=4)
    _write_model(settings.checkpoint_dir / "m.safetensors", 0)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def _post(client, image: bytes = IMG, **data):
    fields = {"image_size": "48", "overlays": "false", **{k: str(v) for k, v in data.items()}}
    return client.post("/attention", files={"image": ("x.png", image, "image/png")}, data=fields)


def _cache_counts(client) -> dict[str, float]:
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("dino_map_cache_total{"):
            counts[line.split('"')[1]] = float(line.split()[-1])
    return counts


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"layer": 3}, "use 0 to 2, or -3 to -1"),
        ({"layer": -4}, "use 0 to 2, or -3 to -1"),
        ({"layer": "x"}, "layer"),
        ({"query": "6,0"}, "outside the 6x10 patch grid"),
        ({"query": "0,10"}, "use row 0 to 5 and col 0 to 9"),
        ({"query": "-1,2"}, "outside the 6x10"),
        ({"query": "1"}, "query"),
        ({"query": "a,b"}, 'integers like "row,col"'),
        ({"heads": "0,3"}, "from 0 to 2"),
        ({"heads": "1,1"}, "a head twice"),
        ({"heads": "x"}, "heads"),
        ({"overlay_format": "gif"}, "png, jpeg or webp"),
    ],
)
def test_out_of_range_fields_are_422_stating_the_range(service, data, expected):
    client, _ = service
    r = _post(client, **data)
    assert r.status_code == 422 and expected in r.json()["detail"], r.text


def test_json_body_takes_query_and_heads_as_lists(service):
    client, _ = service
    body = {
        "image": base64.b64encode(IMG).decode(),
        "image_size": 48,
        "query": [5, 9],
        "heads": [2, 0],
        "composite": True,
        "overlays": False,
    }
    r = client.post("/attention", json=body)
    assert r.status_code == 200, r.text
    b = r.json()
    assert (
        b["query"] == [5, 9] and b["composite_heads"] == [2, 0] and len(b["composite_colors"]) == 2
    )
    assert np.asarray(b["query_attentions"]).shape == (HEADS, 6, 10)
    r = client.post("/attention", json={**body, "query": [6, 9]})
    assert r.status_code == 422 and "6x10" in r.json()["detail"]


def test_a_new_threshold_heads_overlays_or_gt_mask_does_not_run_the_model(service):
    client, _ = service
    first = _post(client, layer=1, query="2,3", threshold=0.6).json()
    assert first["cached"] is False and first["timings_ms"]["model"] > 0
    mask = image_bytes(80, 48, mode="L", seed=4)
    for change in (
        {"threshold": 0.3},
        {"heads": "1", "composite": "true"},
        {"overlays": "true"},
        {"overlay_format": "webp", "overlays": "true"},
        {"layer": -2},
    ):
        r = (
            _post(client, layer=1, query="2,3", **change)
            if "layer" not in change
            else _post(client, query="2,3", **change)
        )
        b = r.json()
        assert r.status_code == 200 and b["cached"] is True and b["timings_ms"]["model"] == 0, (
            change,
            b,
        )
        assert (
            b["attentions"] == first["attentions"]
            and b["query_attentions"] == first["query_attentions"]
        )
    with_gt = client.post(
        "/attention",
        files={"image": ("x.png", IMG, "image/png"), "gt_mask": ("m.png", mask)},
        data={"image_size": "48", "layer": "1", "query": "2,3", "overlays": "false"},
    ).json()
    assert with_gt["cached"] is True and len(with_gt["iou"]) == HEADS
    low = _post(client, layer=1, query="2,3", threshold=0.3).json()
    assert np.all(np.asarray(low["masks"]) <= np.asarray(first["masks"]))
    assert _cache_counts(client) == {"miss": 1.0, "hit": 7.0}


@pytest.mark.parametrize(
    "change",
    [
        {"layer": 0},
        {"query": "2,4"},
        {"image_size": 56},
        {"resize": "square"},
        {"image": image_bytes(80, 48, seed=9)},
        {"pca": "true"},
    ],
)
def test_what_the_model_output_depends_on_is_a_miss(service, change):
    client, _ = service
    assert _post(client, layer=1, query="2,3").json()["cached"] is False
    assert _post(client, **{"layer": 1, "query": "2,3", **change}).json()["cached"] is False
    assert _post(client, **{"layer": 1, "query": "2,3", **change}).json()["cached"] is True


def test_npz_meta_says_whether_the_maps_were_cached(service):
    client, _ = service
    metas = []
    for _ in range(2):
        r = _post(client, format="npz", composite="true", query="1,1")
        arrays = np.load(io.BytesIO(r.content), allow_pickle=False)
        metas.append(json.loads(str(arrays["meta"])))
        assert arrays["query_attentions"].shape == (HEADS, 6, 10) and arrays[
            "composite_colors"
        ].shape == (3, 3)
    assert [m["cached"] for m in metas] == [False, True] and metas[1]["timings_ms"]["model"] == 0


def test_an_overwritten_checkpoint_never_serves_stale_maps(service):
    client, settings = service
    before = _post(client).json()
    assert _post(client).json()["cached"] is True
    path = settings.checkpoint_dir / "m.safetensors"
    _write_model(path, 1)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = _post(client).json()
    assert after["cached"] is False and after["attentions"] != before["attentions"]


def test_cache_entries_zero_turns_the_cache_off(tmp_path):
    settings = isolated_settings(tmp_path, default_model="m", cache_entries=0)
    _write_model(settings.checkpoint_dir / "m.safetensors", 0)
    with TestClient(create_app(settings)) as client:
        assert [_post(client).json()["cached"] for _ in range(2)] == [False, False]


class _Blob:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def test_map_cache_is_lru_bounded_in_entries_and_bytes():
    cache = MapCache(max_entries=3, max_bytes=100)
    for key in "abc":
        cache.put(key, _Blob(30))
    assert cache.get("a") is not None  # a is now the most recent: b is the oldest
    cache.put("d", _Blob(30))  # 4 entries > 3: b goes
    assert cache.get("b") is None and len(cache) == 3 and cache.nbytes == 90
    cache.put("e", _Blob(60))  # 150 bytes > 100: the oldest (c, then a) go
    assert cache.get("c") is None and cache.get("a") is None and cache.get("d") is not None
    assert cache.nbytes == 90 and len(cache) == 2
    cache.put("huge", _Blob(101))  # larger than the whole budget: not stored, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2
    assert cache.get("e", usable=lambda v: v.nbytes < 50) is None  # present but unusable: a miss
    assert cache.get("e") is not None  # an unusable hit is not evicted (misses: the metric)


def test_byte_bound_holds_in_the_service(tmp_path):
    one_entry_mb = 0.015  # the 80x48 or the 64x40 image with its maps fits (~12 kB), not both
    settings = isolated_settings(
        tmp_path, default_model="m", cache_entries=32, cache_mb=one_entry_mb
    )
    _write_model(settings.checkpoint_dir / "m.safetensors", 0)
    with TestClient(create_app(settings)) as client:
        _post(client)
        _post(client, image_size=40)
        service = client.app.state.service
        assert len(service.cache) == 1 and service.cache.nbytes <= one_entry_mb * 2**20
        assert _post(client, image_size=40).json()["cached"] is True
        assert _post(client).json()["cached"] is False


def _decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.mark.parametrize(
    ("fmt", "pil_format", "mime"),
    [("png", "PNG", "image/png"), ("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")],
)
def test_overlay_format_sets_the_encoding_and_the_mime(service, fmt, pil_format, mime):
    client, _ = service
    b = _post(
        client, overlays="true", overlay_format=fmt, query="0,0", composite="true", pca="true"
    ).json()
    assert b["overlay_mime"] == mime
    ov = b["overlays"]
    images = [
        ov["image"],
        ov["mean"],
        *ov["heads"],
        *ov["masks"],
        *ov["query_heads"],
        ov["query_mean"],
        ov["composite"],
        ov["pca"],
        ov["pca_fg"],
    ]
    assert len(ov["heads"]) == len(ov["masks"]) == len(ov["query_heads"]) == HEADS
    for data in images:
        pic = _decode(data)
        assert pic.format == pil_format and pic.size == (80, 48)


def test_vectorised_overlays_equal_the_per_head_pictures():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    maps = rng.random((3, 3, 5)).astype(np.float32)
    masks = maps > 0.5
    image = Image.fromarray(base)
    heats = heat_batch(base, maps, 8)
    outlined = mask_batch(base, masks, 8)
    for h in range(3):
        ref = np.asarray(heat_overlay(image, upsample_nearest(maps[h], 8))).astype(int)
        assert np.abs(heats[h].astype(int) - ref).max() <= 1
        np.testing.assert_array_equal(
            outlined[h], np.asarray(mask_overlay(image, upsample_nearest(masks[h], 8)))
        )


def test_query_overlays_mark_the_chosen_patch(service):
    client, _ = service
    b = _post(client, overlays="true", query="4,7").json()
    for data in [b["overlays"]["query_mean"], *b["overlays"]["query_heads"]]:
        pixels = np.asarray(_decode(data).convert("RGB"))
        marked = np.all(pixels == QUERY_MARK_RGB, axis=-1)
        rows, cols = np.nonzero(marked)
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (
            32,
            39,
            56,
            63,
        )  # the cell's 8x8 outline
        assert not marked[
            34:38, 58:62
        ].any()  # only the outline: the cell's inside still shows the map


def test_composite_draws_each_chosen_head_in_its_colour(service):
    client, _ = service
    b = _post(client, overlays="true", composite="true", heads="2,0", threshold=0.5).json()
    colors = np.asarray(b["composite_colors"])
    assert colors.shape == (2, 3) and len({tuple(c) for c in colors}) == 2
    assert np.all(colors.max(1) == 255)  # saturated, full-brightness colours
    base = np.asarray(_decode(b["overlays"]["image"]).convert("RGB")).astype(float)
    comp = np.asarray(_decode(b["overlays"]["composite"]).convert("RGB")).astype(float)
    masks = np.asarray(b["masks"]).astype(bool)
    keep2 = upsample_nearest(masks[2], PATCH)
    keep0 = upsample_nearest(masks[0], PATCH)
    expected = base.copy()  # the authors' apply_mask, head after head, alpha 0.5
    for keep, color in ((keep2, colors[0]), (keep0, colors[1])):
        expected = np.where(keep[..., None], expected * 0.5 + 0.5 * color, expected)
    assert np.abs(comp - expected).max() <= 1
    assert (keep2 & ~keep0).any() and (~keep2 & ~keep0).any()


def test_batch_takes_the_same_fields(service):
    client, _ = service
    r = client.post(
        "/attention/batch",
        files=[("images", ("a.png", IMG, "image/png"))] * 2,
        data={"image_size": "48", "layer": "0", "query": "1,2", "overlays": "false"},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["layer"] for x in results] == [0, 0] and [x["cached"] for x in results] == [
        False,
        True,
    ]
    assert results[0]["query_attentions"] == results[1]["query_attentions"]


def test_rethreshold_is_much_faster_than_the_first_request(service):
    client, _ = service
    first = _post(client, image=image_bytes(160, 96, seed=5), image_size=96, overlays="true").json()
    again = _post(
        client, image=image_bytes(160, 96, seed=5), image_size=96, overlays="true", threshold=0.2
    ).json()
    assert again["cached"] is True and first["cached"] is False
    assert again["timings_ms"]["total"] < first["timings_ms"]["total"]


@pytest.mark.parametrize(("patch", "grid"), [(2, (5, 4)), (4, (3, 7)), (16, (4, 3))])
def test_patchwise_outline_equals_the_pixel_outline(patch, grid):
    rng = np.random.default_rng(patch)
    base = rng.integers(0, 256, (grid[0] * patch, grid[1] * patch, 3), dtype=np.uint8)
    masks = rng.random((4, *grid)) > 0.45
    masks[0] = True  # the border alone
    got = mask_batch(base, masks, patch)
    for h in range(4):
        ref = mask_overlay(Image.fromarray(base), upsample_nearest(masks[h], patch))
        np.testing.assert_array_equal(got[h], np.asarray(ref))
