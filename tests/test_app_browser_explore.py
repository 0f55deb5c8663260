"""The explorer's panels in real Chromium: real service, random-init ViT-S/16 at 480 px.

A click on the image picks the query patch (its maps appear, with the patch outlined in the right
cell); the Block slider changes the block; a threshold move is answered from the service's map
cache (no model run) and its end-to-end time, measured by the page's own clock from the slider's
``pointerup`` (its release) to the moment the new mask gallery has loaded, is printed and written to
``/tmp/app_explore_timings.json``. Screenshots are kept under ``/tmp``.
"""

from __future__ import annotations

import io
import json
import shutil
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.app_stack import running_app, scene, serving_checkpoints
from tests.browser import BROWSER_MARKS, open_page, set_number
from tests.test_app_browser import browser  # noqa: F401

MODEL_ID = "vits16_random"
HEADS, DEPTH, PATCH = 6, 12, 16
SHOTS = Path("/tmp")
TIMINGS = Path("/tmp/app_explore_timings.json")

pytestmark = BROWSER_MARKS


@contextmanager
def vits16_backend(tmp: Path) -> Iterator[str]:
    """The real service over a random-init ViT-S/16 (marked untrained) on a loopback port."""
    from trainer.model.checkpoint import export_backbone_safetensors
    from trainer.model.vit import build_vit

    torch.manual_seed(0)
    (tmp / "checkpoints").mkdir(parents=True, exist_ok=True)
    export_backbone_safetensors(
        build_vit("vit_small", 16),
        tmp / "checkpoints" / f"{MODEL_ID}.safetensors",
        arch="vit_small",
        epoch=None,
        trained=False,
    )
    with serving_checkpoints(tmp, MODEL_ID) as url:
        yield url


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("browser_explore")
    with vits16_backend(tmp) as backend_url, running_app(backend_url) as app:
        with open_page(browser, app.url) as page:
            yield page


def _gallery_srcs(page, elem_id: str) -> list[str]:
    return page.eval_on_selector_all(
        f"#{elem_id} .thumbnail-item img", "els => els.map(e => e.src)"
    )


def _wait_new_gallery(page, elem_id: str, before: list[str], count: int = HEADS) -> list[str]:
    """Wait until ``elem_id`` shows ``count`` loaded pictures, not the ones in ``before``; the
    page's clock at that moment is left in ``window.__galleryAt``."""
    page.wait_for_function(
        """([sel, n, before]) => {
            const imgs = [...document.querySelectorAll(sel)];
            const done = imgs.length === n && imgs.every(i => i.complete && i.naturalWidth > 0)
                && JSON.stringify(imgs.map(i => i.src)) !== JSON.stringify(before);
            if (done) window.__galleryAt = performance.now();
            return done;
        }""",
        arg=[f"#{elem_id} .thumbnail-item img", count, before],
        polling="raf",
    )
    return _gallery_srcs(page, elem_id)


RECORD_RELEASE = """() => document.querySelector('#threshold input[type=range]').addEventListener(
    'pointerup', () => { window.__releasedAt = performance.now(); }, {capture: true})"""


def _picture(page, selector: str) -> np.ndarray:
    src = page.locator(selector).first.get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")).astype(
        int
    )


def _outline_score(pixels: np.ndarray, row: int, col: int) -> float:
    """Mean distance from cyan of the 2 px outline of grid cell (row, col)."""
    cell = pixels[row * PATCH : (row + 1) * PATCH, col * PATCH : (col + 1) * PATCH]
    ring = np.concatenate(
        [
            cell[:2].reshape(-1, 3),
            cell[-2:].reshape(-1, 3),
            cell[:, :2].reshape(-1, 3),
            cell[:, -2:].reshape(-1, 3),
        ]
    )
    return float(np.abs(ring - np.array([0, 255, 255])).mean())


def _shot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    shutil.copyfile(path, SHOTS / f"app_screenshot_{name}.png")
    return path


def test_click_block_threshold_in_the_browser(page, tmp_path):
    page.get_by_text("Connected to").wait_for()
    page.wait_for_function("() => document.querySelector('#block input[type=number]').max === '11'")
    image, _ = scene((640, 480))
    image.save(tmp_path / "scene.png")
    page.locator("#image-input input[type=file]").set_input_files(str(tmp_path / "scene.png"))
    heads = _wait_new_gallery(page, "heads", [])
    page.get_by_text("grid 30×40 patches (rows × cols), block 11").wait_for()
    _wait_new_gallery(page, "masks", [])

    # click the patch at natural pixel (200, 120): row 7, col 12
    img = page.locator("#processed img").first
    natural_w = img.evaluate("e => e.naturalWidth")
    box = img.bounding_box()
    scale = box["width"] / natural_w
    img.click(position={"x": (12 * PATCH + 8) * scale, "y": (7 * PATCH + 8) * scale})
    _wait_new_gallery(page, "query-heads", [])
    assert page.locator("#query input, #query textarea").first.input_value() == "7,12"
    page.get_by_text("from patch row 7, col 12").wait_for()
    pixels = _picture(page, "#query-mean img")
    assert pixels.shape == (480, 640, 3)
    scores = np.array([[_outline_score(pixels, r, c) for c in range(40)] for r in range(30)])
    best = np.unravel_index(scores.argmin(), scores.shape)
    second = np.partition(scores.ravel(), 1)[1]
    assert best == (7, 12) and scores[7, 12] < 80 and second > scores[7, 12] + 40, (
        scores[7, 12],
        second,
    )
    _shot(page, "explore_query", tmp_path)

    # another block: a model run for block 5, query kept
    set_number(page, "block", 5)
    heads = _wait_new_gallery(page, "heads", heads)
    page.get_by_text("grid 30×40 patches (rows × cols), block 5").wait_for()
    page.get_by_text("Block 5: attention from patch row 7, col 12").wait_for()
    assert "no model run" not in page.locator("#status").inner_text()
    _shot(page, "explore_block", tmp_path)

    # threshold moves: answered from the cache, timed from the release to the new mask gallery
    slider = page.locator("#threshold input[type=range]")
    sbox = slider.bounding_box()
    masks, timings = _gallery_srcs(page, "masks"), []
    page.evaluate(RECORD_RELEASE)
    for fraction in (0.85, 0.3, 0.7, 0.2, 0.9, 0.4):
        slider.click(position={"x": sbox["width"] * fraction, "y": sbox["height"] / 2})
        masks = _wait_new_gallery(page, "masks", masks)
        timings.append(page.evaluate("() => window.__galleryAt - window.__releasedAt"))
        threshold = page.locator("#threshold input[type=number]").input_value()
        page.get_by_text(f"threshold {float(threshold)}").wait_for()
        assert "(maps from the cache: no model run)" in page.locator("#status").inner_text()
    report = {
        "model": MODEL_ID,
        "image": "640x480 keep_aspect 480",
        "rethreshold_ms": [round(t) for t in timings],
        "p50_ms": round(statistics.median(timings)),
        "max_ms": round(max(timings)),
    }
    TIMINGS.write_text(json.dumps(report, indent=2))
    print(f"\nre-threshold in the browser, release -> new mask gallery: {report}")
    assert (
        page.locator("#composite img").count() == 1
        and "head 5" in page.locator("#composite-legend").inner_text()
    )
    _shot(page, "explore_threshold", tmp_path)

    # Clear: back to the CLS token
    page.locator("#clear-query").click()
    page.get_by_text("click a patch of the image").wait_for()
    assert page.locator("#query input, #query textarea").first.input_value() == ""
    assert "Traceback" not in page.content()
