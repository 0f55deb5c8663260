"""The page in a real browser (headless Chromium via Playwright), the real service behind it."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.examples import example_paths
from tests.app_stack import MODEL_IDS, TINY, free_port, running_app, running_backend, scene
from tests.browser import BROWSER_MARKS, chromium, open_page, set_number

SCREENSHOT_COPY = Path("/tmp/app_screenshot.png")
HEADS = TINY["num_heads"]

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    examples = example_paths(tmp / "examples", names=("astronaut",))
    with running_backend(tmp) as backend_url, running_app(backend_url, examples) as app:
        with open_page(browser, app.url) as page:
            yield page


def _captions(page, gallery: str) -> list[str]:
    return page.locator(f"#{gallery} .caption-label").all_inner_texts()


def _wait_for_heads(page, gallery: str, previous: list[str] | None = None) -> list[str]:
    """Wait until ``gallery`` shows one captioned item per head (different from ``previous``)."""
    page.wait_for_function(
        """([sel, n, before]) => {
            const caps = [...document.querySelectorAll(sel)].map(e => e.innerText);
            return caps.length === n && JSON.stringify(caps) !== JSON.stringify(before);
        }""",
        arg=[f"#{gallery} .caption-label", HEADS, previous or []],
    )
    return _captions(page, gallery)


def test_upload_threshold_download_and_screenshot(page, tmp_path):
    page.get_by_text("Connected to").wait_for()
    # the first model's controls follow the list (Block 0..1 for the tiny model): after that, the
    # size set here is the one the analysis uses
    page.wait_for_function("() => document.querySelector('#block input[type=range]')?.max === '1'")
    assert "random weights" in page.locator("#status").inner_text()
    set_number(page, "image-size", 96)
    image, mask = scene((144, 96))
    image.save(tmp_path / "scene.png")
    mask.save(tmp_path / "scene_mask.png")
    page.locator("#gt-input input[type=file]").set_input_files(str(tmp_path / "scene_mask.png"))
    page.locator("#image-input input[type=file]").set_input_files(str(tmp_path / "scene.png"))

    assert _wait_for_heads(page, "heads") == [f"head {i}" for i in range(HEADS)]
    page.wait_for_function(f"() => document.querySelectorAll('#heads img').length === {HEADS}")
    masks_before = _wait_for_heads(page, "masks")
    status = page.locator("#status").inner_text()
    assert (
        f"Showing {MODEL_IDS[-1]}" in status
        and "threshold 0.6" in status
        and "grid 12×18 patches (rows × cols)" in status
    )
    page.get_by_text("Best head: head").wait_for()

    slider = page.locator("#threshold input[type=range]")
    box = slider.bounding_box()
    slider.click(
        position={"x": box["width"] * 0.8, "y": box["height"] / 2}
    )  # pointerup -> release -> rerun
    masks_after = _wait_for_heads(page, "masks", previous=masks_before)
    assert masks_after != masks_before
    new_threshold = float(page.locator("#threshold input[type=number]").input_value())
    assert 0.7 <= new_threshold <= 0.9
    page.get_by_text(f"threshold {new_threshold}").wait_for()

    page.locator("#download").click()
    link = page.locator("#zip a").first
    link.wait_for()
    with page.expect_download() as download_info:
        link.click()
    saved = tmp_path / "download.zip"
    download_info.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        names = set(archive.namelist())
        summary = json.loads(archive.read("result.json"))
        arrays = np.load(io.BytesIO(archive.read("attention.npz")))
        assert arrays["masks"].shape == (HEADS, 12, 18) and "iou" in arrays
    assert {f"overlays/head_{i:02d}.jpg" for i in range(HEADS)} <= names
    assert summary["model"] == MODEL_IDS[-1] and summary["request"]["threshold"] == new_threshold

    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    assert shot.stat().st_size > 10_000


def test_compare_tab_shows_both_checkpoints_head_for_head(page, tmp_path):
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare").click()
    assert _wait_for_heads(page, "compare-heads") == [f"head {i}" for i in range(HEADS)]
    text = page.locator("#compare-status").inner_text()
    assert f"A: Showing {MODEL_IDS[-1]}" in text and f"B: Showing {MODEL_IDS[0]}" in text
    page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
    shutil.copyfile(
        tmp_path / "compare.png", SCREENSHOT_COPY.with_name("app_screenshot_compare.png")
    )


def test_a_built_in_example_is_analysed_when_clicked(page):
    page.get_by_role("tab", name="Explore").click()
    page.locator("#examples").get_by_text("astronaut").click()
    # the ground-truth mask still uploaded is of the earlier 3:2 scene: the service rejects it,
    # readably
    page.get_by_text("The service could not use the input").first.wait_for()
    assert "Traceback" not in page.content()
    page.locator(
        "#gt-input button[aria-label='Remove Image']"
    ).click()  # removing it re-runs the analysis
    page.get_by_text("Image 96×96 px, grid 12×12 patches (rows × cols)").wait_for()
    assert _captions(page, "heads") == [f"head {i}" for i in range(HEADS)]
    assert "Upload a ground-truth mask" in page.locator("#best-head").inner_text()


def test_service_down_shows_a_readable_message(browser, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    with running_app(down) as app, open_page(browser, app.url) as page:
        page.get_by_text(f"The attention service at {down} is not reachable").first.wait_for()
        assert "Traceback" not in page.content()
        page.screenshot(path=str(tmp_path / "down.png"))
    shutil.copyfile(tmp_path / "down.png", SCREENSHOT_COPY.with_name("app_screenshot_error.png"))
