"""The Match tab and the Compare tab across model families, in Chromium with the real service.

The service serves tiny random files: the DINO checkpoints of tests/app_stack.py, a DINOv2 with
4 registers in the authors' layout (tests/dinov2_layouts.py) and a DINOv3 in the authors' layout
(tests/dinov3_layouts.py). A click in A moves the best-match marker in B; Compare puts the DINOv2
and the DINOv3 model head for head.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.match_handlers import MARKER_RGB
from tests.app_stack import (
    MODEL_IDS,
    running_app,
    scene,
    serving_checkpoints,
    write_tiny_checkpoints,
)
from tests.browser import BROWSER_MARKS, chromium, open_page, set_number

pytestmark = BROWSER_MARKS
V2, V3 = "v2_reg4", "dinov3_vits16_pretrain_lvd1689m-tiny"
V2_HEADS = V3_HEADS = 2


def write_family_checkpoints(folder: Path) -> None:
    """The DINO pair, a DINOv2 with registers and a DINOv3, all random."""
    from tests import dinov2_layouts, dinov3_layouts

    write_tiny_checkpoints(folder)
    torch.save(dinov2_layouts.authors_state(128, 2, 4, seed=12), folder / f"{V2}.pth")
    arch = dinov3_layouts.tiny_arch()
    torch.save(dinov3_layouts.authors_state(arch, seed=21), folder / f"{V3}.pth")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("match_browser")
    write_family_checkpoints(tmp / "checkpoints")
    with (
        serving_checkpoints(tmp, MODEL_IDS[-1]) as backend_url,
        running_app(backend_url) as app,
        chromium() as browser,
        open_page(browser, app.url, height=1000) as page,
    ):
        page.get_by_text("Connected to").wait_for()
        yield page


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("match_photos")
    image, _ = scene((96, 96))
    image.save(tmp / "a.png")
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp / "b.png")
    return {"a": str(tmp / "a.png"), "b": str(tmp / "b.png")}


def _picture(page, selector: str) -> Image.Image:
    src = page.locator(selector).first.get_attribute("src")
    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


def _marker_centre(picture: Image.Image) -> tuple[float, float]:
    """The centre of the cyan best-match box drawn on B."""
    pixels = np.asarray(picture).astype(int)
    cyan = np.all(np.abs(pixels - np.asarray(MARKER_RGB)) < 40, axis=-1)
    ys, xs = np.nonzero(cyan)
    assert len(xs) > 0, "no marker drawn"
    return float(xs.mean()), float(ys.mean())


def _click_a(page, x: float, y: float, before: str | None) -> tuple[float, float]:
    box = page.locator("#match-a img").bounding_box()
    page.locator("#match-a img").click(position={"x": box["width"] * x, "y": box["height"] * y})
    page.wait_for_function(
        """(before) => {
            const img = document.querySelector('#match-where img');
            return img && img.complete && img.naturalWidth > 0 && img.src !== before;
        }""",
        arg=before,
    )
    return _marker_centre(_picture(page, "#match-where img"))


def test_a_click_in_a_moves_the_marker_in_b(page, photos):
    set_number(page, "image-size", 96)
    page.get_by_role("tab", name="Match").click()
    page.locator("#match-a input[type=file]").set_input_files(photos["a"])
    page.locator("#match-b input[type=file]").set_input_files(photos["b"])
    page.locator("#match-run").click()
    page.get_by_text("best buddies; A 12x12, B 12x12 patches").wait_for()
    first = _click_a(page, 0.6, 0.45, None)  # on the disc
    src = page.locator("#match-where img").get_attribute("src")
    assert "Patch [" in page.locator("#match-status").inner_text()
    second = _click_a(page, 0.05, 0.95, src)  # the background's far corner
    assert np.hypot(first[0] - second[0], first[1] - second[1]) > 8  # more than one patch
    status = page.locator("#match-status").inner_text()
    assert "Random weights: structure here comes from colour, not learning" in status


def _pick(page, elem_id: str, model: str) -> None:
    picker = page.locator(f"#{elem_id} input")
    picker.fill(model)
    picker.press("Enter")


def test_compare_puts_a_dinov2_and_a_dinov3_model_head_for_head(page, photos):
    page.get_by_role("tab", name="Compare").click()
    _pick(page, "model-a", V2)  # model A sets the Explore tab's size to its default
    _pick(page, "model-b", V3)
    page.get_by_role("tab", name="Explore").click()
    page.wait_for_function("() => document.querySelector('#image-size input').value === '518'")
    set_number(page, "image-size", 112)  # a multiple of both patch sizes, 14 and 16
    page.locator("#image-input input[type=file]").set_input_files(photos["a"])
    page.get_by_text(f"Showing {MODEL_IDS[-1]}").wait_for()
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare").click()
    page.wait_for_function(
        f"() => document.querySelectorAll('#compare-heads .thumbnail-item img').length === "
        f"{max(V2_HEADS, V3_HEADS)}"
    )
    text = page.locator("#compare-status").inner_text()
    assert f"A: Showing {V2}" in text and f"B: Showing {V3}" in text
    assert "Registers: 4" in text and "grid 8×8 patches" in text and "grid 7×7 patches" in text
    assert page.locator("#compare-heads label[data-testid=block-label]").count() == 0
    pair = _picture(page, "#compare-heads .thumbnail-item img")
    assert pair.width > 2 * 112 and pair.height > 112  # two panels under their drawn titles
    page.screenshot(path=str(photos_dir(photos) / "compare_v2_v3.png"), full_page=True)


def photos_dir(photos: dict[str, str]) -> Path:
    return Path(photos["a"]).parent
