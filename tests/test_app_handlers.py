"""The page's handlers against a fake service: what is shown, downloaded, how errors read."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app import compare_handlers, explore_handlers, model_handlers, rendering, view_reuse
from app.client import BackendError

PATCH = 4
DEPTH = 5


def reference_masks(attn: np.ndarray, threshold: float) -> np.ndarray:
    """The paper's masks: per head keep the largest patches holding ``threshold`` of the mass."""
    heads, gh, gw = attn.shape
    masks = np.zeros((heads, gh * gw), dtype=np.uint8)
    for h in range(heads):
        flat = attn[h].ravel()
        order = np.argsort(flat)  # ascending
        cum = np.cumsum(flat[order] / flat.sum())
        masks[h, order[cum > 1 - threshold]] = 1
    return masks.reshape(heads, gh, gw)


def _png(color: tuple[int, int, int], size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def head_color(i: int) -> tuple[int, int, int]:
    return (40 * i % 256, 255 - 40 * i % 256, 7)


def fake_result(
    model: str,
    heads: int,
    grid: tuple[int, int],
    threshold: float,
    trained: bool,
    gt: np.ndarray | None = None,
    seed: int = 0,
) -> dict:
    """A reply shaped like docs/API.md: softmax over 1+N tokens with the CLS column dropped."""
    gh, gw = grid
    logits = np.random.default_rng(seed).normal(size=(heads, 1 + gh * gw)) * 2
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    attn = soft[:, 1:].reshape(heads, gh, gw)
    masks = reference_masks(attn, threshold)
    size = (gw * PATCH, gh * PATCH)
    result = {
        "model": model,
        "arch": "vit_test",
        "patch_size": PATCH,
        "num_heads": heads,
        "trained": trained,
        "source": "test",
        "grid": [gh, gw],
        "image_size": [gh * PATCH, gw * PATCH],
        "params": {"image_size": gh * PATCH, "resize": "keep_aspect", "threshold": threshold},
        "attentions": attn.tolist(),
        "mean_attention": attn.mean(0).tolist(),
        "masks": masks.tolist(),
        "coverage": masks.reshape(heads, -1).mean(1).tolist(),
        "overlays": {
            "image": _png((9, 9, 9), size),
            "mean": _png((1, 2, 3), size),
            "heads": [_png(head_color(i), size) for i in range(heads)],
            "masks": [_png(head_color(i)[::-1], size) for i in range(heads)],
        },
        "timings_ms": {"total": 12.5},
    }
    if gt is not None:
        inter = (masks.astype(bool) & gt).reshape(heads, -1).sum(1)
        union = (masks.astype(bool) | gt).reshape(heads, -1).sum(1)
        iou = inter / union
        result.update(iou=iou.tolist(), best_head=int(iou.argmax()), best_iou=float(iou.max()))
    return result


def add_explore(result: dict, explore: dict) -> dict:
    """The explorer's fields of docs/API.md, as the service adds them for ``explore``."""
    heads, (gh, gw) = result["num_heads"], result["grid"]
    size = (gw * PATCH, gh * PATCH)
    layer = explore.get("layer", -1)
    result.update(layer=layer % DEPTH, depth=DEPTH, cached=False)
    if explore.get("query"):
        result["query"] = list(explore["query"])
        result["query_attentions"] = np.full((heads, gh, gw), 1 / (1 + gh * gw)).tolist()
        result["overlays"]["query_heads"] = [_png((0, 255, 255), size) for _ in range(heads)]
        result["overlays"]["query_mean"] = _png((0, 250, 250), size)
    if explore.get("composite"):
        chosen = explore.get("heads") or list(range(heads))
        result.update(
            composite_heads=chosen, composite_colors=[[255, 40 * i, 0] for i in range(len(chosen))]
        )
        result["overlays"]["composite"] = _png((255, 0, 255), size)
    if explore.get("pca"):
        result.update(
            pca_rgb=np.full((gh, gw, 3), 0.5).tolist(), pca_fg=np.eye(gh, gw, dtype=int).tolist()
        )
        result["overlays"].update(pca=_png((128, 128, 128), size), pca_fg=_png((10, 10, 10), size))
    return result


class FakeClient:
    base_url = "http://fake:8000"

    def __init__(
        self, heads: dict[str, int] | None = None, error: Exception | None = None, reply=None
    ):
        self.heads = heads or {"tiny": 3}
        self.error, self.reply, self.calls = error, reply, []

    def models(self) -> dict:
        if self.error:
            raise self.error
        return {
            "default": next(iter(self.heads)),
            "models": [
                {
                    "id": m,
                    "arch": "vit_test",
                    "patch_size": PATCH,
                    "num_heads": n,
                    "trained": m != "tiny",
                    "available": True,
                    "depth": DEPTH,
                }
                for m, n in self.heads.items()
            ],
        }

    def attention(
        self,
        image,
        model=None,
        image_size=480,
        resize="keep_aspect",
        threshold=0.6,
        overlays=True,
        gt_mask=None,
        **explore,
    ) -> dict:
        self.calls.append(
            {
                "model": model,
                "image_size": image_size,
                "threshold": threshold,
                "gt_mask": gt_mask,
                **explore,
            }
        )
        if self.error:
            raise self.error
        if self.reply is not None:
            return self.reply
        model = model or next(iter(self.heads))
        gt = np.zeros((6, 8), dtype=bool)
        gt[1:4, 2:6] = True
        result = fake_result(
            model, self.heads[model], (6, 8), threshold, model != "tiny", gt=gt if gt_mask else None
        )
        return add_explore(result, explore)


@pytest.fixture
def photo(tmp_path: Path) -> str:
    path = tmp_path / "photo.png"
    Image.new("RGB", (32, 24), (200, 100, 50)).save(path)
    return str(path)


def _pixel(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((0, 0))


def test_analyse_shows_one_labelled_overlay_per_head_in_order(photo):
    client = FakeClient({"tiny": 3})
    image, heads, mean, masks, table, best, status, state = explore_handlers.analyse(
        client, photo, "tiny", 24, "keep_aspect", 0.6
    )[:8]
    assert [label for _, label in heads] == ["head 0", "head 1", "head 2"]
    assert [_pixel(im) for im, _ in heads] == [head_color(i) for i in range(3)]
    assert image.size == (32, 24) and mean.size == (32, 24)
    assert client.calls == [
        {
            "model": "tiny",
            "image_size": 24,
            "threshold": 0.6,
            "gt_mask": None,
            "layer": -1,
            "query": None,
            "heads": None,
            "composite": True,
            "pca": True,
            "overlay_format": "jpeg",
        }
    ]
    cov = np.asarray(state["result"]["coverage"])
    assert [label for _, label in masks] == [f"head {i} · {c:.0%} kept" for i, c in enumerate(cov)]
    assert (
        "random weights: structure here comes from colour" in status
        and "**tiny**" in status
        and "3 heads" in status
    )
    assert "Upload a ground-truth mask" in best and "IoU" not in table.columns


def test_coverage_table_matches_the_paper_masks(photo):
    client = FakeClient({"tiny": 3})
    *_, table, _, _, state = explore_handlers.analyse(
        client, photo, "tiny", 24, "keep_aspect", 0.45
    )[:8]
    attn = np.asarray(state["result"]["attentions"])
    ref = reference_masks(attn, 0.45)
    np.testing.assert_allclose(table["coverage"], ref.reshape(3, -1).mean(1), atol=1e-4)
    assert list(table["kept patches"]) == list(ref.reshape(3, -1).sum(1))
    # each kept set holds at least `threshold` of its head's mass, and dropping its smallest patch
    # would not
    for h in range(3):
        kept = attn[h][ref[h].astype(bool)]
        assert kept.sum() / attn[h].sum() >= 0.45 - 1e-9
        assert (kept.sum() - kept.min()) / attn[h].sum() < 0.45


def test_ground_truth_adds_iou_per_head_and_names_the_best_head(photo):
    client = FakeClient({"vits": 4})
    *_, table, best, status, state = explore_handlers.analyse(
        client, photo, "vits", 24, "keep_aspect", 0.6, gt_mask=photo
    )[:8]
    iou = np.asarray(state["result"]["iou"])
    np.testing.assert_allclose(table["IoU"], iou, atol=1e-4)
    assert f"Best head: head {int(iou.argmax())}" in best and f"{iou.max():.3f}" in best
    assert "trained weights" in status
    assert client.calls[0]["gt_mask"] == photo


def test_missing_image_and_bad_threshold_are_readable(photo):
    with pytest.raises(gr.Error, match="Upload an image or pick one of the examples"):
        explore_handlers.analyse(FakeClient(), None, "tiny", 24, "keep_aspect", 0.6)
    with pytest.raises(gr.Error, match=r"threshold must be in \(0, 1\]"):
        explore_handlers.analyse(FakeClient(), photo, "tiny", 24, "keep_aspect", 1.5)
    with pytest.raises(gr.Error, match="Pick a model A and a model B"):
        compare_handlers.compare(FakeClient(), photo, "tiny", None, 24, "keep_aspect", 0.6)


@pytest.mark.parametrize(
    "error",
    [
        BackendError("The attention service at http://fake:8000 is not reachable (refused)."),
        BackendError("Unknown model: unknown model 'x'; choose one of tiny", status=404),
        BackendError("The service is not ready: busy (retry in 2 s)", status=503),
    ],
)
def test_service_errors_reach_the_page_verbatim(photo, error):
    with pytest.raises(gr.Error) as err:
        explore_handlers.analyse(FakeClient(error=error), photo, "tiny", 24, "keep_aspect", 0.6)
    assert err.value.message == str(error)
    with pytest.raises(gr.Error) as err:
        model_handlers.list_models(FakeClient(error=error))
    assert err.value.message == str(error)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            {
                "model": "m",
                "num_heads": 1,
                "coverage": [0.5],
                "masks": [[[1]]],
                "overlays": {"heads": ["%%%"], "image": "%%%"},
            },
            "not a readable image",
        ),
        ({"model": "m", "num_heads": 1, "coverage": [0.5], "masks": [[[1]]]}, "has no overlays"),
        (
            {
                "model": "m",
                "overlays": {
                    "heads": [_png((0, 0, 0), (4, 4))],
                    "image": _png((0, 0, 0), (4, 4)),
                    "mean": _png((0, 0, 0), (4, 4)),
                },
            },
            "not what the app expects",
        ),
    ],
)
def test_replies_that_cannot_be_shown_become_readable_errors(photo, reply, expected):
    with pytest.raises(gr.Error, match=expected):
        explore_handlers.analyse(FakeClient(reply=reply), photo, "m", 24, "keep_aspect", 0.6)


def test_threshold_change_without_an_image_changes_nothing():
    client = FakeClient()
    outputs = explore_handlers.rerun_on_change(client, None, "tiny", 24, "keep_aspect", 0.3)
    assert len(outputs) == 15 and all(o == gr.skip() for o in outputs) and client.calls == []


def test_threshold_change_with_an_image_reruns_with_the_new_threshold(photo):
    client = FakeClient()
    low = explore_handlers.rerun_on_change(client, photo, "tiny", 24, "keep_aspect", 0.2)[7]
    high = explore_handlers.rerun_on_change(client, photo, "tiny", 24, "keep_aspect", 0.9)[7]
    assert [c["threshold"] for c in client.calls] == [0.2, 0.9]
    assert np.sum(high["result"]["masks"]) > np.sum(low["result"]["masks"])


def test_download_zip_holds_overlays_arrays_and_parameters(photo, tmp_path):
    state = explore_handlers.analyse(
        FakeClient({"vits": 4}), photo, "vits", 24, "square", 0.7, gt_mask=photo
    )[7]
    path = Path(explore_handlers.download(state, out_dir=tmp_path / "out"))
    assert path.name == "attention_vits_photo.zip"
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        expected_pngs = {f"overlays/{k}_{i:02d}.png" for k in ("head", "mask") for i in range(4)}
        assert expected_pngs | {"overlays/image.png", "overlays/mean.png"} <= names
        assert _pixel(
            Image.open(io.BytesIO(archive.read("overlays/head_02.png"))).convert("RGB")
        ) == head_color(2)
        arrays = np.load(io.BytesIO(archive.read("attention.npz")))
        summary = json.loads(archive.read("result.json"))
    result = state["result"]
    np.testing.assert_allclose(arrays["attentions"], np.asarray(result["attentions"]), rtol=1e-6)
    np.testing.assert_array_equal(
        arrays["masks"], reference_masks(arrays["attentions"].astype(np.float64), 0.7)
    )
    np.testing.assert_allclose(arrays["iou"], result["iou"], rtol=1e-6)
    assert arrays["attentions"].shape == (4, 6, 8) and arrays["masks"].dtype == np.uint8
    assert json.loads(str(arrays["meta"]))["model"] == "vits"
    assert summary["model"] == "vits" and summary["num_heads"] == 4 and summary["trained"] is True
    assert summary["request"] == {
        "image_name": "photo.png",
        "model": "vits",
        "image_size": 24,
        "resize": "square",
        "threshold": 0.7,
        "gt_mask_name": "photo.png",
        "layer": -1,
        "query": None,
        "heads": None,
    }


def test_download_before_any_analysis_says_what_to_do():
    with pytest.raises(gr.Error, match="analyse an image first"):
        explore_handlers.download(None)


def test_compare_puts_head_i_of_both_models_side_by_side(photo):
    client = FakeClient({"tiny": 3, "vits": 4})
    pairs, means, table, status = compare_handlers.compare(
        client, photo, "tiny", "vits", 24, "keep_aspect", 0.6
    )
    assert [label for _, label in pairs] == ["head 0", "head 1", "head 2", "head 3"]
    zoom = -(-rendering.MIN_PANEL_W // 32)  # the 32 x 24 maps are upscaled to be readable
    width, height = 32 * zoom, 24 * zoom
    for i, (im, _) in enumerate(pairs):
        title_h = im.height - height
        assert im.width == 2 * width + 6 and title_h >= rendering.title_font_size(width)
        left, right = (  # top right corner of each panel: clear of the "random weights" mark
            im.getpixel((width - 2, title_h + 1)),
            im.getpixel((2 * width + 6 - 2, title_h + 1)),
        )
        assert right == head_color(i)
        assert left == (
            head_color(i) if i < 3 else (60, 60, 60)
        )  # model A has no head 3: a grey placeholder
    assert means.size == pairs[0][0].size
    assert list(table.columns) == ["head", "A coverage", "B coverage"]
    assert np.isnan(table["A coverage"][3]) and not np.isnan(table["B coverage"][3])
    assert "A: Showing **tiny**" in status and "B: Showing **vits**" in status
    assert [c["model"] for c in client.calls] == ["tiny", "vits"]


def test_models_fill_the_three_dropdowns_and_say_what_the_default_is():
    main, a, b, status = model_handlers.list_models(FakeClient({"tiny": 3, "vits": 6}))
    assert main.value == "tiny" and a.value == "tiny" and b.value == "vits"
    assert [c[1] for c in main.choices] == ["tiny", "vits"]
    assert main.choices[0][0] == "tiny (vit_test/4, random weights)"
    assert main.choices[1][0] == "vits (vit_test/4, trained)"
    assert (
        "Default **tiny**" in status
        and "random weights: structure here comes from colour" in status
    )


def test_unavailable_models_are_labelled_and_an_empty_list_is_an_error():
    assert model_handlers.model_label(
        {
            "id": "x",
            "arch": "vit_small",
            "patch_size": 16,
            "trained": True,
            "available": False,
            "error": "downloads are off",
        }
    ).endswith("unavailable: downloads are off")

    class Empty(FakeClient):
        def models(self) -> dict:
            return {"default": None, "models": []}

    with pytest.raises(gr.Error, match="offers no models"):
        model_handlers.list_models(Empty())


def test_the_app_never_imports_torch():
    code = (
        "import sys, app.ui, app.handlers, app.client, app.examples, app.dev_server, app.__main__; "
        "bad = [m for m in ('torch', 'trainer', 'backend') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )


def test_examples_are_written_once_from_the_installed_package(tmp_path, caplog):
    from app.examples import example_paths

    paths = example_paths(tmp_path, names=("chelsea", "no_such_photo"))
    assert [p.name for p in paths] == ["chelsea.jpg"]  # an unknown name is skipped with a warning
    assert "no_such_photo" in caplog.text
    with Image.open(paths[0]) as photo:
        assert photo.format == "JPEG" and photo.size == (451, 300)
    stamp = paths[0].stat().st_mtime_ns
    assert example_paths(tmp_path, names=("chelsea",))[0].stat().st_mtime_ns == stamp


def test_query_block_and_heads_reach_the_service_and_the_panels(photo):
    client = FakeClient({"vits": 4})
    out = explore_handlers.analyse(
        client, photo, "vits", 24, "keep_aspect", 0.6, None, 3, "2,5", [2, 0]
    )
    assert len(out) == len(explore_handlers.ANALYSIS_NAMES) == 15
    call = client.calls[-1]
    assert (call["layer"], call["query"], call["heads"], call["composite"], call["pca"]) == (
        3,
        [2, 5],
        [0, 2],
        True,
        True,
    )
    query_heads, query_mean, caption, composite, legend, pca, pca_fg = out[8:]
    assert [label for _, label in query_heads] == [f"head {i}" for i in range(4)]
    assert (
        _pixel(query_mean) == (0, 250, 250) and "row 2, col 5" in caption and "Block 3" in caption
    )
    assert composite.size == (32, 24) and "rgb(255, 40, 0)" in legend and "head 2" in legend
    assert _pixel(pca) == (128, 128, 128) and pca_fg.size == (32, 24)


def test_no_query_and_no_heads_ticked_show_empty_panels(photo):
    client = FakeClient({"vits": 4})
    out = explore_handlers.analyse(client, photo, "vits", 24, "keep_aspect", 0.6, None, 1, "", [])
    assert client.calls[-1]["query"] is None and client.calls[-1]["composite"] is False
    assert out[8] == [] and out[9] is None and "click a patch" in out[10]
    assert out[11] is None and "Tick at least one head" in out[12]


def test_blocks_reach_the_service_as_given_and_heads_past_the_models_are_left_out(photo):
    client = FakeClient({"vits": 4})
    explore_handlers.analyse(client, photo, "vits", 24, "keep_aspect", 0.6, None, -1)  # default
    explore_handlers.analyse(client, photo, "vits", 24, "keep_aspect", 0.6, None, DEPTH - 1)
    explore_handlers.analyse(client, photo, "vits", 24, "keep_aspect", 0.6, None, 0)
    explore_handlers.analyse(client, photo, "vits", 24, "keep_aspect", 0.6, None, 40)
    assert [c["layer"] for c in client.calls] == [-1, DEPTH - 1, 0, 40]  # the service checks
    explore_handlers.analyse(
        client, photo, "vits", 24, "keep_aspect", 0.6, None, 0, "", [0, 3, 5, 23]
    )
    assert client.calls[-1]["heads"] == [
        0,
        3,
    ]  # the page's boxes before it learnt this model's 4 heads


@pytest.mark.parametrize(
    ("x", "y", "expected"), [(0, 0, "0,0"), (13, 9, "2,3"), (31.9, 23.9, "5,7"), (40, 30, "5,7")]
)
def test_a_click_maps_to_the_patch_under_it(photo, x, y, expected):
    state = explore_handlers.analyse(
        FakeClient({"vits": 4}), photo, "vits", 24, "keep_aspect", 0.6
    )[7]
    assert explore_handlers.patch_at(state, x, y) == expected  # grid 6 x 8 of 4 px patches


def test_query_text_errors_are_readable(photo):
    with pytest.raises(gr.Error, match="row,col"):
        explore_handlers.analyse(
            FakeClient(), photo, "tiny", 24, "keep_aspect", 0.6, None, 1, "2;3"
        )
    with pytest.raises(gr.Error, match="Analyse an image first"):
        explore_handlers.patch_at(None, 1, 1)


def test_model_controls_follow_the_models_depth_and_heads():
    block, heads = model_handlers.explore_controls(FakeClient({"vits": 4}), "vits")
    assert block.maximum == DEPTH - 1 and block.value == DEPTH - 1
    assert heads.choices == [(f"head {i}", i) for i in range(4)] and heads.value == [0, 1, 2, 3]


def test_download_holds_the_query_composite_and_pca(photo, tmp_path):
    state = explore_handlers.analyse(
        FakeClient({"vits": 4}), photo, "vits", 24, "square", 0.7, None, 2, "1,1", [1, 3]
    )[7]
    path = Path(explore_handlers.download(state, out_dir=tmp_path))
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        arrays = np.load(io.BytesIO(archive.read("attention.npz")))
        summary = json.loads(archive.read("result.json"))
    assert {f"overlays/query_head_{i:02d}.png" for i in range(4)} <= names
    assert {
        "overlays/query_mean.png",
        "overlays/composite.png",
        "overlays/pca.png",
        "overlays/pca_fg.png",
    } <= names
    assert arrays["query_attentions"].shape == (4, 6, 8) and arrays["pca_rgb"].shape == (6, 8, 3)
    assert arrays["pca_fg"].dtype == np.uint8 and arrays["composite_colors"].tolist() == [
        [255, 0, 0],
        [255, 40, 0],
    ]
    assert (
        summary["layer"] == 2
        and summary["query"] == [1, 1]
        and summary["composite_heads"] == [1, 3]
    )
    assert summary["request"]["layer"] == 2 and summary["request"]["heads"] == [1, 3]


def _is_skip(value) -> bool:
    return isinstance(value, dict) and value == gr.skip()


def test_a_cached_threshold_change_resends_only_what_changed(photo):
    client = FakeClient({"vits": 4})
    first = explore_handlers.analyse(
        client, photo, "vits", 24, "keep_aspect", 0.6, None, 2, "1,1", [0, 1]
    )
    client.reply = add_explore(
        fake_result("vits", 4, (6, 8), 0.3, True),
        {"layer": 2, "query": [1, 1], "composite": True, "pca": True},
    )
    client.reply["cached"] = True
    again = explore_handlers.analyse(
        client, photo, "vits", 24, "keep_aspect", 0.3, None, 2, "1,1", [0, 1], first[7]
    )
    names = explore_handlers.ANALYSIS_NAMES
    skipped = {names[i] for i, out in enumerate(again) if _is_skip(out)}
    assert (
        skipped
        == view_reuse.STATIC_OUTPUTS
        == {
            "processed",
            "heads",
            "mean",
            "query_heads",
            "query_mean",
            "query_caption",
            "pca",
            "pca_fg",
        }
    )  # image, heat maps, query panel and PCA stay as they are
    assert again[7]["request"]["threshold"] == 0.3 and len(again[3]) == 4 and again[11] is not None
    moved = explore_handlers.analyse(
        client, photo, "vits", 24, "keep_aspect", 0.3, None, 1, "1,1", [0, 1], first[7]
    )
    assert not any(_is_skip(out) for out in moved)  # another block: everything is redrawn
    client.reply["cached"] = False
    fresh = explore_handlers.analyse(
        client, photo, "vits", 24, "keep_aspect", 0.3, None, 2, "1,1", [0, 1], first[7]
    )
    assert not any(_is_skip(out) for out in fresh)  # the service ran the model: redraw everything
