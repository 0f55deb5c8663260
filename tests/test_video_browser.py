"""The Video tab in a real browser (headless Chromium via Playwright), with the real service."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.app_stack import running_app, running_backend
from tests.browser import BROWSER_MARKS, chromium, open_page, set_number
from tests.video_clips import write_clip

SCREENSHOT_COPY = Path("/tmp/video_tab_screenshot.png")
FRAMES, W, H = 90, 192, 144

pytestmark = BROWSER_MARKS

# Records every state of the progress bar (Gradio replaces the element on each update).
WATCH_PROGRESS = """() => {
    window.__progress = [];
    setInterval(() => {
        const bar = document.querySelector('#video-progress');
        if (bar) window.__progress.push([Number(bar.value), Number(bar.max)]);
    }, 20);
}"""
VIDEO_READY = """() => {
    const v = document.querySelector('#video-result video');
    return v && v.readyState >= 1 && v.duration > 0 && v.videoWidth > 0;
}"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("video_browser")
    with (
        running_backend(tmp) as backend_url,
        running_app(backend_url) as app,
        chromium() as browser,
        open_page(browser, app.url, height=1400) as page,
    ):
        yield page


def test_upload_progress_and_playable_result(page, tmp_path):
    page.get_by_text("Connected to").wait_for()
    explore = page.locator("#image-size input[type=number]")
    page.get_by_role("tab", name="Video").click()
    size = page.locator("#video-image-size input[type=number]")
    for attr in ("min", "max", "step"):  # the same size control as the Explore tab's
        assert size.get_attribute(attr) == explore.get_attribute(attr), attr
    assert page.locator("#video-cancel").is_disabled()  # no job yet: nothing to cancel
    clip = tmp_path / "clip.mp4"
    write_clip(clip, FRAMES, W, H, fps=30)
    set_number(page, "video-image-size", H)
    page.locator("#video-input input[type=file]").set_input_files(str(clip))
    page.locator("#video-render").get_by_text("frame | mean").click()
    page.evaluate(WATCH_PROGRESS)
    page.locator("#video-run").click()
    page.wait_for_function("() => !document.querySelector('#video-cancel').disabled")
    page.get_by_text(f"Done: {FRAMES} frames").wait_for()
    page.wait_for_function("() => document.querySelector('#video-cancel').disabled")
    page.wait_for_function(VIDEO_READY)
    seen = page.evaluate("window.__progress")
    assert any(0 < value < total for value, total in seen), seen  # the bar moved before the end
    assert seen[-1] == [FRAMES, FRAMES]
    width, height, duration = page.evaluate(
        "(() => { const v = document.querySelector('#video-result video');"
        " return [v.videoWidth, v.videoHeight, v.duration]; })()"
    )
    assert (width, height) == (2 * W, H) and abs(duration - FRAMES / 30) < 0.2
    source = page.evaluate("document.querySelector('#video-source video').videoWidth")
    assert source == W
    page.locator("#video-files a").first.wait_for()
    shot = tmp_path / "video_tab.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    assert shot.stat().st_size > 10_000
