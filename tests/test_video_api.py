"""POST /attention/video, /jobs/...: frames, times, parity with POST /attention, limits, cleanup."""

from __future__ import annotations

import io
import json
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.main import create_app
from backend.video.jobs import JOB_FILE, Job, JobStore
from tests.service_helpers import check_no_server_error, isolated_settings, write_tiny_checkpoint
from tests.video_clips import write_audio_only, write_clip

FRAMES, W, H, SRC_FPS = 24, 64, 48, 12
LIMITS = {
    "max_video_mb": 0.5,
    "video_max_frames": 40,
    "video_max_duration_s": 5.0,
    "video_max_pixels": 100_000,
    "video_jobs_per_client": 2,
    "video_batch": 5,
}
LIMITS_SCHEMA = {"max_video_mb": 0.5, "video_max_frames": 8, "video_max_duration_s": 5.0}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    out = {}
    for name in ("clip.mp4", "clip.gif"):
        write_clip(folder / name, FRAMES, W, H, SRC_FPS)
        out[name] = (folder / name).read_bytes()
    return out


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    s = isolated_settings(tmp_path_factory.mktemp("video"), **LIMITS)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    return s


@pytest.fixture(scope="module")
def client(settings):
    with TestClient(create_app(settings)) as c:
        yield c


def submit(client, data: bytes, name: str = "clip.mp4", **params):
    params.setdefault("model", "tiny")
    params.setdefault("image_size", 48)
    return client.post(
        "/attention/video",
        files={"video": (name, data, "video/mp4")},
        data={k: str(v) for k, v in params.items() if v is not None},
    )


def wait(client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}").json()
        if body["state"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still running")


def run_job(client, data: bytes, name: str = "clip.mp4", **params) -> tuple[str, dict]:
    r = submit(client, data, name, **params)
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert r.json()["status_url"] == f"/jobs/{job}"
    status = wait(client, job)
    assert status["state"] == "done", status
    return job, status


def npz(client, job: str) -> dict[str, np.ndarray]:
    r = client.get(f"/jobs/{job}/result", params={"format": "npz"})
    assert r.status_code == 200
    return dict(np.load(io.BytesIO(r.content)))


def decoded_frames(data: bytes) -> list[tuple[float, Image.Image]]:
    """Every frame of the clip with its time, decoded here independently of the service."""
    with av.open(io.BytesIO(data)) as container:
        return [(float(f.time), f.to_image()) for f in container.decode(video=0)]


def reference_masks(attn: np.ndarray, threshold: float) -> np.ndarray:
    """The paper's masks: per head, the largest patches holding ``threshold`` of the mass."""
    flat = attn.reshape(attn.shape[0], -1).astype(np.float64)
    masks = np.zeros(flat.shape, dtype=bool)
    for h, row in enumerate(flat):
        order = np.argsort(row, kind="stable")
        masks[h, order[np.cumsum(row[order] / row.sum()) > 1 - threshold]] = True
    return masks.reshape(attn.shape)


def test_every_frame_equals_the_image_endpoint(client, clips):
    job, status = run_job(client, clips["clip.mp4"], threshold=0.5)
    assert status["frames_done"] == status["frames_total"] == FRAMES and not status["truncated"]
    arrays = npz(client, job)
    frames = decoded_frames(clips["clip.mp4"])
    assert arrays["attentions"].shape == (FRAMES, 1, 6, 8) and arrays["masks"].dtype == bool
    np.testing.assert_allclose(arrays["timestamps"], [t for t, _ in frames], atol=1e-6)
    np.testing.assert_allclose(arrays["timestamps"], np.arange(FRAMES) / SRC_FPS, atol=1e-6)
    np.testing.assert_allclose(
        arrays["mean_attention"], arrays["attentions"].mean(1), rtol=1e-6, atol=1e-8
    )
    for i in (0, 7, FRAMES - 1):
        buf = io.BytesIO()
        frames[i][1].save(buf, format="PNG")
        r = client.post(
            "/attention",
            files={"image": ("f.png", buf.getvalue(), "image/png")},
            data={
                "model": "tiny",
                "image_size": "48",
                "threshold": "0.5",
                "format": "npz",
                "overlays": "false",
            },
        )
        assert r.status_code == 200, r.text
        single = np.load(io.BytesIO(r.content))
        np.testing.assert_allclose(
            arrays["attentions"][i], single["attentions"], rtol=1e-4, atol=1e-6
        )
        assert (arrays["masks"][i] == reference_masks(arrays["attentions"][i], 0.5)).mean() > 0.99
    meta = json.loads(str(arrays["meta"]))
    assert (
        meta["model"] == "tiny" and meta["request"]["threshold"] == 0.5 and meta["grid"] == [6, 8]
    )


def test_sampling_fps_timestamps_and_truncation(client, clips):
    job, status = run_job(client, clips["clip.gif"], "clip.gif", fps=4, max_frames=5, render="side")
    assert status["frames_done"] == 5 and status["truncated"] is True
    summary = client.get(f"/jobs/{job}/result", params={"format": "json"}).json()
    assert summary["fps_used"] == 4 and summary["grid"] == [6, 8] and len(summary["coverage"]) == 5
    # reference: sample k is the first source frame at or after k / fps (GIF delays are whole
    # centiseconds)
    times = [t for t, _ in decoded_frames(clips["clip.gif"])]
    expected = [next(t for t in times if t >= k / 4 - 0.01) for k in range(5)]
    np.testing.assert_allclose(summary["timestamps"], expected, atol=1e-6)
    assert all(abs(t - k / 4) < 1 / SRC_FPS for k, t in enumerate(summary["timestamps"]))


@pytest.mark.parametrize(
    "render,size", [("mean", (W, H)), ("side", (2 * W, H)), ("masks", (W, H)), ("heads", (W, H))]
)
def test_mp4_result_has_the_requested_fps_and_size(client, clips, render, size):
    job, _ = run_job(client, clips["clip.mp4"], fps=6, render=render)
    r = client.get(f"/jobs/{job}/result", params={"format": "mp4"})
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(r.content)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.average_rate == Fraction(6) and stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    assert len(frames) == 12 and frames[0].shape[:2] == (size[1], size[0])
    source = client.get(f"/jobs/{job}/source")
    with av.open(io.BytesIO(source.content)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.frames) == (W, H, 12)


def test_mean_render_is_the_inferno_mean_map(client, clips):
    """The mean render is the authors': mean over heads, min-max, inferno, patch-nearest."""
    from matplotlib import colormaps

    job, _ = run_job(client, clips["clip.mp4"], fps=3, render="mean")
    arrays = npz(client, job)
    with av.open(io.BytesIO(client.get(f"/jobs/{job}/result").content)) as container:
        first = next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32)
    mean = arrays["mean_attention"][0]
    scaled = (mean - mean.min()) / (mean.max() - mean.min())
    expected = colormaps["inferno"](scaled)[..., :3] * 255
    expected = np.repeat(np.repeat(expected, 8, 0), 8, 1)
    assert np.abs(first - expected).mean() < 6.0  # H.264 at crf 20 changes pixels only a little


def _bad(settings, tmp_path):
    big = b"\x00\x00\x00\x18ftypmp42" + bytes(int(0.6 * 2**20))
    wav = tmp_path / "tone.m4a"
    write_audio_only(wav)
    long_clip = tmp_path / "long.mp4"
    write_clip(long_clip, frames=70, width=32, height=32, fps=10)
    large = tmp_path / "large.mp4"
    write_clip(large, frames=2, width=400, height=300, fps=10)
    return {
        "text": (b"hello, this is not a video at all" * 20, 415, "not_a_video"),
        "png": (Image.new("RGB", (8, 8)).tobytes() + b"x" * 300, 415, "not_a_video"),
        "empty": (b"", 400, "bad_video"),
        "audio_only": (wav.read_bytes(), 400, "no_video_stream"),
        "too_big": (big, 413, "upload_too_large"),
        "too_long": (long_clip.read_bytes(), 413, "video_too_long"),
        "too_many_pixels": (large.read_bytes(), 413, "video_too_large"),
    }


def test_each_bad_input_is_a_clear_4xx(client, clips, settings, tmp_path):
    cases = _bad(settings, tmp_path)
    data = clips["clip.mp4"]
    cases["truncated"] = (data[: len(data) // 2], 400, "truncated_video")
    for name, (payload, status, code) in cases.items():
        r = submit(client, payload)
        assert (r.status_code, r.json()["code"]) == (status, code), (name, r.text)
        assert len(r.json()["detail"]) > 20 and "Traceback" not in r.text
    for params, needle in (
        ({"render": "sparkles"}, "mean, heads, masks, side"),
        ({"fps": 0}, "fps"),
        ({"max_frames": 41}, "1 to 40"),
        ({"threshold": 2}, "threshold"),
        ({"colour": "red"}, "unknown field"),
        ({"layer": 9}, "0 to 1"),
    ):
        r = submit(client, data, **params)
        assert r.status_code == 422 and needle in r.json()["detail"], (params, r.text)
    assert submit(client, data, model="nope").status_code == 404
    r = client.post("/attention/video", data={"model": "tiny"})
    assert r.status_code == 422 and "video is missing" in r.json()["detail"]
    assert not [p for p in (settings.cache_dir / "jobs").iterdir() if p.name.startswith(".upload")]


def test_unknown_job_result_before_done_and_bad_format(client, clips):
    assert client.get("/jobs/nope").status_code == 404
    assert client.delete("/jobs/nope").status_code == 404
    assert client.get("/jobs/nope/result").status_code == 404
    job, _ = run_job(client, clips["clip.mp4"], fps=2)
    r = client.get(f"/jobs/{job}/result", params={"format": "avi"})
    assert r.status_code == 422 and "mp4, npz, json" in r.json()["detail"]


def test_cancel_a_running_job_then_delete_it(client, clips, settings):
    app_state = client.app.state
    started = []
    runner = app_state.video.runner
    original = runner._run_batch

    def slow_batch(*args, **kwargs):
        started.append(1)
        time.sleep(0.3)
        return original(*args, **kwargs)

    runner._run_batch = slow_batch
    try:
        r = submit(client, clips["clip.mp4"])
        job = r.json()["job"]
        while not started:
            time.sleep(0.01)
        r = client.delete(f"/jobs/{job}")
        assert r.status_code == 202 and r.json()["state"] == "cancelled"
        status = wait(client, job)
        time.sleep(0.5)
    finally:
        runner._run_batch = original
    assert status["state"] == "cancelled" and status["frames_done"] < FRAMES
    assert client.get(f"/jobs/{job}/result").status_code == 409
    assert client.get(f"/jobs/{job}/result").json()["state"] == "cancelled"
    assert client.delete(f"/jobs/{job}").status_code == 204
    assert client.get(f"/jobs/{job}").status_code == 404
    assert not (settings.cache_dir / "jobs" / job).exists()


def test_jobs_per_client_limit(client, clips):
    runner = client.app.state.video.runner
    original = runner._run_batch
    release = __import__("threading").Event()

    def blocked(*args, **kwargs):
        release.wait(10)
        return original(*args, **kwargs)

    runner._run_batch = blocked
    try:
        jobs = [submit(client, clips["clip.mp4"], fps=2) for _ in range(2)]
        assert [r.status_code for r in jobs] == [202, 202]
        r = submit(client, clips["clip.mp4"], fps=2)
        assert r.status_code == 429 and "DINO_VIDEO_JOBS_PER_CLIENT" in r.json()["detail"]
    finally:
        release.set()
        runner._run_batch = original
    for r in jobs:
        assert wait(client, r.json()["job"])["state"] == "done"


def test_ttl_clean_up_deletes_finished_jobs_and_files(tmp_path, clips):
    s = isolated_settings(tmp_path, video_job_ttl_s=0.5)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        job, _ = run_job(c, clips["clip.mp4"], fps=2)
        folder = s.cache_dir / "jobs" / job
        assert (folder / "result.mp4").exists() and (folder / "result.npz").exists()
        time.sleep(0.8)
        assert c.get(f"/jobs/{job}").status_code == 404
        assert not folder.exists()


def test_restart_fails_unfinished_jobs_and_keeps_finished_ones(tmp_path, clips):
    s = isolated_settings(tmp_path)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        done_job, _ = run_job(c, clips["clip.mp4"], fps=2)
    store = JobStore(s.cache_dir / "jobs", 3600, 2, 100)  # a job the previous process left running
    running = store.create("127.0.0.1", {"request": {}})
    store.start(running, 10)
    store.close()
    assert (
        json.loads((s.cache_dir / "jobs" / running.id / JOB_FILE).read_text())["state"] == "running"
    )
    with TestClient(create_app(s)) as c:
        status = c.get(f"/jobs/{running.id}").json()
        assert status["state"] == "failed" and status["error"] == "service restarted"
        assert c.get(f"/jobs/{done_job}").json()["state"] == "done"
        assert c.get(f"/jobs/{done_job}/result", params={"format": "npz"}).status_code == 200


def test_job_file_is_written_atomically(tmp_path):
    store = JobStore(tmp_path / "jobs", 3600, 2, 100)
    try:
        job = store.create("a", {"request": {}})
        store.finish(job, "failed", "boom")
        files = sorted(p.name for p in (tmp_path / "jobs" / job.id).iterdir())
        assert files == [JOB_FILE]
        assert (
            Job(**json.loads((tmp_path / "jobs" / job.id / JOB_FILE).read_text())).error == "boom"
        )
    finally:
        store.close()


def test_batches_wait_for_a_slot_and_image_requests_interleave(tmp_path, clips):
    """One slot, short queue timeout: the job waits out a held slot, then images get in between
    its batches (the slot's order of holders shows an image request between two batches)."""
    import contextlib
    import threading

    s = isolated_settings(tmp_path, max_concurrency=1, queue_timeout_s=0.05, video_batch=2)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        step = c.app.state.service.step
        real_slot = step.slot
        holders: list[str] = []
        held = threading.Event()

        @contextlib.contextmanager
        def recorded_slot(cancel=None):
            with real_slot(cancel):
                holders.append(threading.current_thread().name)
                time.sleep(0.02)  # every holder keeps the slot a little, so the job lasts
                yield

        def hold_slot():
            with real_slot():
                held.set()
                time.sleep(0.6)

        holder = threading.Thread(target=hold_slot)
        holder.start()
        held.wait()
        step.slot = recorded_slot
        job = submit(c, clips["clip.mp4"]).json()["job"]
        time.sleep(0.3)
        assert c.get(f"/jobs/{job}").json()["frames_done"] == 0  # waiting for the slot, not failed
        holder.join()
        step.queue_timeout_s = 5.0  # from now on image requests wait for the slot too
        image = io.BytesIO()
        decoded_frames(clips["clip.mp4"])[0][1].save(image, format="PNG")
        answered = 0
        while c.get(f"/jobs/{job}").json()["state"] in ("queued", "running"):
            r = c.post(
                "/attention",
                files={"image": ("f.png", image.getvalue(), "image/png")},
                data={"model": "tiny", "image_size": "48", "overlays": "false"},
            )
            answered += r.status_code == 200
        status = wait(c, job)
        assert status["state"] == "done" and status["frames_done"] == FRAMES and answered >= 1
        video = [i for i, name in enumerate(holders) if name.startswith("video-job")]
        images = [i for i, name in enumerate(holders) if not name.startswith("video-job")]
        assert len(video) == FRAMES // 2  # one slot per batch of 2 frames
        assert any(video[0] < i < video[-1] for i in images), holders


VIDEO_OPERATIONS = [
    ("post", "/attention/video", 25),
    ("get", "/jobs/{job_id}", 10),
    ("delete", "/jobs/{job_id}", 10),
    ("get", "/jobs/{job_id}/result", 10),
    ("get", "/jobs/{job_id}/source", 10),
]


@pytest.mark.parametrize(("method", "path", "examples"), VIDEO_OPERATIONS)
def test_no_server_error_from_video_schema_cases(tmp_path, method, path, examples):
    import schemathesis

    s = isolated_settings(
        tmp_path, video_jobs_per_client=1000, video_max_jobs=1000, **LIMITS_SCHEMA
    )
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    app = create_app(s)
    with TestClient(app):
        operation = schemathesis.openapi.from_asgi("/openapi.json", app)[path][method.upper()]
        check_no_server_error(operation, examples)


def test_the_video_path_has_its_own_body_limit(tmp_path, clips):
    """DINO_MAX_VIDEO_MB lets a clip through where DINO_MAX_REQUEST_MB stops other bodies."""
    s = isolated_settings(tmp_path, max_request_mb=0.01, max_video_mb=0.5)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    padded = clips["clip.mp4"] + bytes(
        40_000
    )  # ~ 50 kB: over the request limit, under the video limit
    with TestClient(create_app(s)) as c:
        r = c.post(
            "/attention", files={"image": ("a.png", padded, "image/png")}, data={"model": "tiny"}
        )
        assert r.status_code == 413 and "DINO_MAX_REQUEST_MB" in r.json()["detail"]
        job, _ = run_job(c, padded, fps=2)
        r = submit(c, bytes(int(1.6 * 2**20)))
        assert r.status_code == 413 and "DINO_MAX_VIDEO_MB" in r.json()["detail"]


def test_a_register_model_uses_its_patch_size_and_prefix_tokens(tmp_path, clips):
    """DINOv2 + 4 registers (patch 14, 5 prefix tokens): frames equal POST /attention, any layer."""
    import torch

    from tests.dinov2_layouts import authors_state

    s = isolated_settings(tmp_path, cache_entries=0)
    torch.save(authors_state(128, 2, 4, seed=12), s.checkpoint_dir / "v2reg.pth")
    with TestClient(create_app(s)) as c:
        job, status = run_job(c, clips["clip.mp4"], model="v2reg", image_size=42, fps=3, layer=0)
        arrays = npz(c, job)
        assert arrays["attentions"].shape == (
            6,
            2,
            3,
            4,
        )  # 64x48 -> 56x42 -> 4 x 3 patches of 14 px
        assert (
            arrays["attentions"].sum((-2, -1)) < 1
        ).all()  # the CLS and register columns are left out
        buf = io.BytesIO()
        decoded_frames(clips["clip.mp4"])[8][1].save(
            buf, format="PNG"
        )  # sample 2 at 2/3 s = source frame 8
        r = c.post(
            "/attention",
            files={"image": ("f.png", buf.getvalue(), "image/png")},
            data={
                "model": "v2reg",
                "image_size": "42",
                "format": "npz",
                "overlays": "false",
                "layer": "0",
            },
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            arrays["attentions"][2],
            np.load(io.BytesIO(r.content))["attentions"],
            rtol=1e-4,
            atol=1e-6,
        )


def test_image_size_defaults_to_the_models_own(tmp_path, clips):
    """Left out, image_size is the model's default (518 for DINOv2), as in POST /attention."""
    import torch

    from tests.dinov2_layouts import authors_state

    s = isolated_settings(tmp_path, cache_entries=0)
    torch.save(authors_state(128, 1, 0, seed=3), s.checkpoint_dir / "v2.pth")
    with TestClient(create_app(s)) as c:
        job, _ = run_job(c, clips["clip.mp4"], model="v2", image_size=None, fps=1, max_frames=1)
        meta = json.loads(str(npz(c, job)["meta"]))
        assert meta["request"]["image_size"] == 518
        assert npz(c, job)["attentions"].shape[-2:] == (
            37,
            49,
        )  # 64x48 -> 690x518 -> 49 x 37 patches


@pytest.mark.parametrize("stage", ["decode", "model", "encode"])
def test_a_fault_in_any_stage_fails_the_job_and_frees_the_worker(tmp_path, clips, stage):
    """A fault injected in decode, model or encode ends the job as failed, with its message, and
    the next job runs (the single worker is not left waiting on a stalled thread)."""
    import backend.video.runner as runner

    s = isolated_settings(tmp_path, video_batch=2)
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        service = c.app.state.service
        real_model, real_prepare, real_render = (
            service.batch_cls_attention,
            runner.prepare,
            runner.render_frame,
        )

        def boom(*args, **kwargs):
            raise RuntimeError(f"injected {stage} fault")

        if stage == "model":
            service.batch_cls_attention = boom
        elif stage == "decode":
            runner.prepare = boom
        else:
            runner.render_frame = boom
        try:
            status = wait(c, submit(c, clips["clip.mp4"]).json()["job"], timeout=30)
        finally:
            service.batch_cls_attention = real_model
            runner.prepare, runner.render_frame = real_prepare, real_render
        assert status["state"] == "failed" and f"injected {stage} fault" in status["error"]
        again = wait(c, submit(c, clips["clip.mp4"]).json()["job"], timeout=30)
        assert again["state"] == "done"
