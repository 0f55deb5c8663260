"""The Video tab's api_names (gradio_client) with the real service behind the app, on loopback."""

from __future__ import annotations

import time
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest
from gradio_client import handle_file

from app.video_tab import progress_html
from tests.app_stack import MODEL_IDS, TINY, live_client, live_stack
from tests.video_clips import write_clip

pytestmark = pytest.mark.slow
FRAMES, W, H = 24, 64, 48


live = pytest.fixture(live_stack, scope="module", name="live")
client = pytest.fixture(live_client, scope="module", name="client")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("video_inputs") / "clip.gif"
    write_clip(path, FRAMES, W, H, fps=12)
    return str(path)


def _path(value) -> str:
    return value["video"] if isinstance(value, dict) else value


def test_video_api_names_are_listed(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/video", "/video_cancel"} <= names


def test_video_job_gives_both_videos_and_the_arrays(client, clip):
    progress, status, job, source, result, files = client.predict(
        handle_file(clip), MODEL_IDS[-1], "side", 6, 0.6, 48, api_name="/video"
    )
    assert f"{FRAMES // 2} / {FRAMES // 2} frames" in progress and job in status
    with av.open(_path(result)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(6) and (stream.width, stream.height) == (2 * W, H)
        assert sum(1 for _ in container.decode(stream)) == FRAMES // 2
    with av.open(_path(source)) as container:  # the gif, transcoded so that browsers play it
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (W, H)
    paths = sorted(files, key=lambda p: _path(p).endswith(".npz"))
    arrays = np.load(_path(paths[1]))
    heads = TINY["num_heads"]
    assert arrays["attentions"].shape == (FRAMES // 2, heads, H // 8, W // 8)
    sums = arrays["attentions"].sum((-2, -1))  # softmax rows without the CLS-to-CLS weight
    assert (arrays["attentions"] > 0).all() and (sums < 1).all() and (sums > 0.5).all()
    np.testing.assert_allclose(np.diff(arrays["timestamps"]), 1 / 6, atol=0.02)


def test_cancel_reaches_the_service(client, live, tmp_path):
    long_clip = tmp_path / "long.mp4"
    write_clip(long_clip, 120, 160, 128, fps=30)
    with open(long_clip, "rb") as fh:
        job = httpx.post(
            f"{live.backend_url}/attention/video",
            files={"video": ("long.mp4", fh, "video/mp4")},
            data={"image_size": "128"},
        ).json()["job"]
    message = client.predict(job, api_name="/video_cancel")
    assert job in message
    deadline = time.monotonic() + 30
    while (
        (r := httpx.get(f"{live.backend_url}/jobs/{job}")).status_code == 200
        and r.json()["state"] in ("queued", "running")
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert (
        r.status_code == 404 or r.json()["state"] == "cancelled"
    )  # cancelled, or finished first and deleted


def test_no_clip_is_a_readable_message(client):
    with pytest.raises(Exception) as err:
        client.predict(None, MODEL_IDS[-1], "mean", 0, 0.6, 48, api_name="/video")
    assert "Upload a clip first" in str(err.value)


def test_progress_bar_html():
    html = progress_html({"state": "running", "frames_done": 3, "frames_total": 12, "eta_s": 4.2})
    assert '<progress id="video-progress" max="12" value="3">' in html and "3 / 12 frames" in html
    assert "about 4 s left" in html


def test_the_time_left_counts_down_while_a_batch_runs():
    from app.video_tab import EtaClock

    clock = EtaClock()
    job = {"state": "running", "frames_done": 8, "frames_total": 32, "eta_s": 6.0}
    assert clock.smooth(job, now=10.0)["eta_s"] == 6.0
    later = {**job, "eta_s": 7.5}  # the service's figure grows while the next batch runs
    assert clock.smooth(later, now=12.0)["eta_s"] == pytest.approx(4.0)
    assert clock.smooth(later, now=20.0)["eta_s"] == 0.0
    moved = {**job, "frames_done": 16, "eta_s": 3.0}  # frames done: the service's new estimate
    assert clock.smooth(moved, now=21.0)["eta_s"] == 3.0


def test_frames_of_random_weights_carry_the_mark():
    from backend.video.render import render_frame

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
    attn = rng.random((3, 12, 16)).astype(np.float32)
    masks = (attn > 0.5).astype(np.uint8)
    plain = render_frame("side", frame, attn, masks, 8)
    marked = render_frame("side", frame, attn, masks, 8, untrained=True)
    corner = marked[-10:, :40].astype(int)  # lower left: the label's red box
    assert (corner[..., 0] > 140).mean() > 0.3 and (corner[..., 2] < 90).mean() > 0.3
    assert np.array_equal(marked[:60], plain[:60]) and not np.array_equal(marked, plain)
