"""Drive the app's API (gradio_client) with the real attention service behind it, on loopback."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.app_stack import (
    MODEL_IDS,
    TINY,
    free_port,
    live_client,
    live_stack,
    running_app,
    scene,
)

pytestmark = pytest.mark.slow
HEADS = TINY["num_heads"]


def reference_masks(attn: np.ndarray, threshold: float) -> np.ndarray:
    """The paper's masks: per head, the largest patches holding ``threshold`` of the mass."""
    flat = attn.reshape(attn.shape[0], -1).astype(np.float64)
    masks = np.zeros_like(flat, dtype=np.uint8)
    for h, row in enumerate(flat):
        order = np.argsort(row, kind="stable")
        masks[h, order[np.cumsum(row[order] / row.sum()) > 1 - threshold]] = 1
    return masks.reshape(attn.shape)


live = pytest.fixture(live_stack, scope="module", name="live")
client = pytest.fixture(live_client, scope="module", name="client")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("inputs")
    image, mask = scene((64, 64))
    image.save(tmp / "scene.png")
    mask.save(tmp / "scene_mask.png")
    return {"image": str(tmp / "scene.png"), "mask": str(tmp / "scene_mask.png")}


def _analyse(
    client: Client,
    files: dict[str, str],
    threshold: float,
    model: str = MODEL_IDS[-1],
    api_name: str = "/analyze",
    gt: bool = True,
) -> tuple:
    return client.predict(
        handle_file(files["image"]),
        model,
        64,
        "keep_aspect",
        threshold,
        handle_file(files["mask"]) if gt else None,
        api_name=api_name,
    )


def _download(client: Client) -> tuple[dict, dict[str, np.ndarray], set[str]]:
    path = client.predict(api_name="/download")
    with zipfile.ZipFile(path) as archive:
        arrays = dict(np.load(io.BytesIO(archive.read("attention.npz"))))
        return json.loads(archive.read("result.json")), arrays, set(archive.namelist())


def test_every_event_has_a_stable_api_name(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {
        "/models",
        "/analyze",
        "/threshold",
        "/compare",
        "/download",
        "/block",
        "/heads",
        "/query",
        "/clear",
        "/model_controls",
    } <= names


def test_models_come_from_the_service(client):
    main, model_a, model_b, status = client.predict(api_name="/models")
    ids = [choice[1] for choice in main["choices"]]
    assert set(MODEL_IDS) <= set(ids)
    assert main["value"] == MODEL_IDS[-1] and model_b["value"] == MODEL_IDS[0]
    assert "random weights" in dict((v, k) for k, v in main["choices"])[MODEL_IDS[-1]]
    assert "Default **tiny_ep1**" in status


def test_analyze_shows_each_head_and_matches_the_paper_masks(client, files):
    image, heads, mean, masks, table, best, status, *_ = _analyse(client, files, 0.6)
    assert [item["caption"] for item in heads] == [f"head {i}" for i in range(HEADS)]
    assert all(Image.open(item["image"]).size == (64, 64) for item in heads + masks)
    assert Image.open(image).size == (64, 64) and Image.open(mean).size == (64, 64)
    assert "**tiny_ep1**" in status and "random weights: structure here comes from colour" in status
    assert "grid 8×8 patches (rows × cols)" in status
    summary, arrays, names = _download(client)
    assert {
        f"overlays/head_{i:02d}.jpg" for i in range(HEADS)
    } <= names  # the app asks for JPEG overlays
    attn = arrays["attentions"]
    assert attn.shape == (HEADS, 8, 8) and np.all(attn > 0)
    assert np.all(
        attn.reshape(HEADS, -1).sum(1) < 1
    )  # softmax over CLS + 64 patches, CLS column dropped
    np.testing.assert_array_equal(arrays["masks"], reference_masks(attn, 0.6))
    np.testing.assert_allclose(
        [row[1] for row in table["data"]], arrays["masks"].reshape(HEADS, -1).mean(1), atol=1e-4
    )
    assert summary["model"] == "tiny_ep1" and summary["request"]["threshold"] == 0.6


def test_ground_truth_gives_iou_per_head_and_the_best_head(client, files):
    _, _, _, _, table, best, _ = _analyse(client, files, 0.6)[:7]
    _, arrays, _ = _download(client)
    disc = np.asarray(Image.open(files["mask"])) > 127
    kept = arrays["masks"].astype(bool).repeat(8, axis=1).repeat(8, axis=2)  # patch -> pixels
    ref = (kept & disc).sum((1, 2)) / (kept | disc).sum((1, 2))
    assert table["headers"] == ["head", "coverage", "kept patches", "IoU"]
    np.testing.assert_allclose([row[3] for row in table["data"]], ref, atol=0.02)
    assert f"Best head: head {int(np.argmax(arrays['iou']))}" in best


def test_threshold_reruns_and_the_masks_grow_with_it(client, files):
    low = _analyse(client, files, 0.3, api_name="/threshold", gt=False)
    _, arrays_low, _ = _download(client)
    high = _analyse(client, files, 0.9, api_name="/threshold", gt=False)
    _, arrays_high, _ = _download(client)
    assert [m["caption"] for m in low[3]] != [m["caption"] for m in high[3]]
    assert np.all(
        arrays_high["masks"] >= arrays_low["masks"]
    )  # a larger mass needs a superset of patches
    assert arrays_high["masks"].sum() > arrays_low["masks"].sum()


def test_compare_two_checkpoints_head_for_head(client, files):
    pairs, means, table, status = client.predict(
        handle_file(files["image"]),
        MODEL_IDS[0],
        MODEL_IDS[1],
        64,
        "keep_aspect",
        0.6,
        None,
        api_name="/compare",
    )
    assert [p["caption"] for p in pairs] == [f"head {i}" for i in range(HEADS)]
    width, height = Image.open(pairs[0]["image"]).size
    assert width > 2 * 64 and height > 64
    assert table["headers"] == ["head", "A coverage", "B coverage"]
    assert "A: Showing **tiny_ep0**" in status and "B: Showing **tiny_ep1**" in status


@pytest.mark.parametrize(
    ("model", "bad_mask", "expected"),
    [
        ("nope", False, "Unknown model: unknown model 'nope'; choose one of tiny_ep0"),
        (MODEL_IDS[-1], True, "The service could not use the input"),
    ],
)
def test_rejected_input_is_a_readable_message(client, files, tmp_path, model, bad_mask, expected):
    mask = None
    if bad_mask:  # a ground truth whose aspect ratio cannot be the image's
        mask = tmp_path / "wide_mask.png"
        Image.new("L", (64, 8), 255).save(mask)
    with pytest.raises(Exception) as err:
        client.predict(
            handle_file(files["image"]),
            model,
            64,
            "keep_aspect",
            0.6,
            handle_file(str(mask)) if mask else None,
            api_name="/analyze",
        )
    text = str(err.value)
    assert expected in text and "Traceback" not in text


def test_service_down_is_a_readable_message():
    down = f"http://127.0.0.1:{free_port()}"
    with running_app(down) as app:
        with pytest.raises(Exception) as err:
            Client(app.url, verbose=False).predict(api_name="/models")
    assert f"{down} is not reachable" in str(err.value) and "Traceback" not in str(err.value)


def _explore(
    client: Client,
    files: dict[str, str],
    api_name: str,
    threshold: float = 0.6,
    layer: int = 1,
    query: str = "",
    heads: list[int] | None = None,
) -> tuple:
    return client.predict(
        handle_file(files["image"]),
        MODEL_IDS[-1],
        64,
        "square",
        threshold,
        None,
        layer,
        query,
        list(range(HEADS)) if heads is None else heads,
        api_name=api_name,
    )


def test_model_controls_give_the_block_range_and_the_heads(client):
    block, heads = client.predict(MODEL_IDS[-1], api_name="/model_controls")
    assert block["maximum"] == TINY["depth"] - 1 and block["value"] == TINY["depth"] - 1
    assert [c[1] for c in heads["choices"]] == list(range(HEADS)) and heads["value"] == list(
        range(HEADS)
    )


def test_query_patch_then_threshold_without_a_model_run(client, files, live):
    out = _explore(client, files, "/query", query="3,5")
    query_heads, query_mean, caption = out[7:10]
    assert [item["caption"] for item in query_heads] == [f"head {i}" for i in range(HEADS)]
    assert Image.open(query_mean).size == (64, 64) and "row 3, col 5" in caption
    _, arrays, names = _download(client)
    assert {
        f"overlays/query_head_{i:02d}.jpg" for i in range(HEADS)
    } <= names and "overlays/pca.jpg" in names
    direct = httpx.post(
        f"{live.backend_url}/attention",
        files={"image": open(files["image"], "rb").read()},
        data={
            "image_size": "64",
            "resize": "square",
            "layer": "1",
            "query": "3,5",
            "overlays": "false",
        },
    ).json()
    np.testing.assert_allclose(arrays["query_attentions"], direct["query_attentions"], rtol=1e-6)
    assert arrays["query_attentions"].shape == (HEADS, 8, 8) and arrays["pca_rgb"].shape == (
        8,
        8,
        3,
    )
    status = _explore(client, files, "/threshold", threshold=0.3, query="3,5")[6]
    assert "no model run" in status and "threshold 0.3" in status


def test_block_heads_and_clear(client, files):
    _explore(client, files, "/block", layer=0)
    summary, _, _ = _download(client)
    assert summary["layer"] == 0 and summary["request"]["layer"] == 0
    out = _explore(client, files, "/heads", layer=0, heads=[2])
    assert "head 2" in out[11] and "head 0" not in out[11] and Image.open(out[10]).size == (64, 64)
    summary, arrays, _ = _download(client)
    assert summary["composite_heads"] == [2] and arrays["composite_colors"].shape == (1, 3)
    cleared = _explore(client, files, "/clear", layer=0, query="1,1")
    assert cleared[0] == "" and cleared[8] == [] and "click a patch" in cleared[10]


def test_the_match_tab_draws_best_buddies_between_two_images(client, files, tmp_path):
    image_b = tmp_path / "b.png"
    Image.open(files["image"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image_b)
    pairs, status = client.predict(
        handle_file(files["image"]),
        handle_file(str(image_b)),
        MODEL_IDS[-1],
        64,
        "key",
        -1,
        10,
        api_name="/match",
    )
    picture = Image.open(pairs)
    assert picture.size == (128, 64)  # A and B side by side at the processed size
    assert "best buddies" in status and "8x8" in status


def test_the_objects_panel_draws_the_box_and_gives_its_iou(client, files):
    picture, status = client.predict(
        handle_file(files["image"]),
        MODEL_IDS[-1],
        64,
        handle_file(files["mask"]),
        "lost",
        api_name="/objects",
    )
    assert Image.open(picture).size == (64, 64)
    assert status.startswith("LOST on tiny_ep1: box [") and "Box IoU with the mask's box" in status
