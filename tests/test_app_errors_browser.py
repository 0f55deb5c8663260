"""The error path in a real browser: after a good analysis, a query typed as "banana" and an
unknown model each show one complete message, the panels keep the last good result marked as
such, and the status line says which result is shown and which request failed."""

from __future__ import annotations

import pytest

from tests.app_stack import MODEL_IDS, TINY, running_app, running_backend, scene
from tests.browser import BROWSER_MARKS, chromium, open_page

HEADS = TINY["num_heads"]
pytestmark = BROWSER_MARKS
UNTRAINED = "Random weights: structure here comes from colour, not learning"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors_browser")
    with (
        running_backend(tmp) as backend_url,
        running_app(backend_url) as app,
        chromium() as browser,
        open_page(browser, app.url, height=1000) as page,
    ):
        yield page


def _gallery(page, elem_id: str) -> list[str]:
    return page.eval_on_selector_all(
        f"#{elem_id} .thumbnail-item img", "els => els.map(e => e.src)"
    )


def _toasts(page) -> list[str]:
    return page.locator(".toast-body").all_inner_texts()


def _close_toasts(page) -> None:
    for button in page.locator(".toast-close").all():
        button.click()
    page.wait_for_function("() => document.querySelectorAll('.toast-body').length === 0")


def _error_badges(page) -> int:
    """Gradio's red "Error" badges drawn over components whose event failed."""
    return page.locator("[data-testid=status-tracker] .error:visible").count()


def _analysed(page, tmp_path) -> list[str]:
    """The heads gallery of a good analysis (the first test uploads the image)."""
    if len(_gallery(page, "heads")) == HEADS:
        return _gallery(page, "heads")
    page.get_by_text("Connected to").wait_for()
    image, _ = scene((96, 64))
    image.save(tmp_path / "scene.png")
    page.locator("#image-input input[type=file]").set_input_files(str(tmp_path / "scene.png"))
    page.wait_for_function(
        f"() => document.querySelectorAll('#heads .thumbnail-item img').length === {HEADS}"
    )
    page.get_by_text(f"Showing {MODEL_IDS[-1]}").wait_for()
    return _gallery(page, "heads")


def _kept_and_marked(page, heads: list[str]) -> str:
    """The panels still show ``heads``, the stale note says so; returns the status line."""
    page.locator("#stale-note").get_by_text("Last good result").wait_for()
    assert _gallery(page, "heads") == heads
    assert page.locator("#composite img").count() == 1 and page.locator("#mean img").count() == 1
    assert _error_badges(page) == 0
    return page.locator("#status").inner_text()


def test_the_banner_names_random_weights(page, tmp_path):
    _analysed(page, tmp_path)
    banner = page.locator("#untrained-banner")
    assert UNTRAINED in banner.inner_text() and banner.is_visible()


def test_a_bad_query_keeps_the_last_result_and_says_so_once(page, tmp_path):
    heads = _analysed(page, tmp_path)
    box = page.locator("#query textarea, #query input").first
    box.fill("banana")
    box.press("Enter")
    page.wait_for_function("() => document.querySelectorAll('.toast-body').length > 0")
    toasts = _toasts(page)
    assert len(toasts) == 1, toasts
    assert "got 'banana'; click the image or press Clear." in toasts[0]  # the reason and the fix
    status = _kept_and_marked(page, heads)
    assert (
        status.startswith("Last good result: Showing tiny_ep1") and "query patch banana" in status
    )
    assert "failed" in status
    _close_toasts(page)
    page.locator("#clear-query").click()  # a good request clears the note
    page.locator("#stale-note").wait_for(state="hidden")
    assert page.locator("#status").inner_text().startswith(f"Showing {MODEL_IDS[-1]}")


def test_an_unknown_model_keeps_the_last_result_and_the_status_names_both(page, tmp_path):
    heads = _analysed(page, tmp_path)
    picker = page.locator("#model input")
    picker.fill("nope")
    picker.press("Enter")
    page.locator("#analyse").click()
    page.wait_for_function("() => document.querySelectorAll('.toast-body').length > 0")
    toasts = _toasts(page)
    assert len(toasts) == 1, toasts
    assert "Unknown model: unknown model 'nope'; choose one of tiny_ep0" in toasts[0]
    status = _kept_and_marked(page, heads)
    assert "Showing tiny_ep1" in status and "the request for model nope" in status
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
