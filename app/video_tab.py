"""The Video tab: upload a clip, follow the service's job with a progress bar, play the result.

API names: ``video`` (a generator: progress while the job runs, then the original and attention
videos and the downloads) and ``video_cancel`` (cancel a job by id).
"""

from __future__ import annotations

import html
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from app import controls, handlers, model_handlers, video_client
from app.handlers import ERROR_TOAST_S, AttentionClient
from app.model_handlers import PageSetup

VIDEO_TYPES = [".mp4", ".webm", ".mov", ".gif", ".mkv", ".m4v", ".avi"]
POLL_S = 0.25
VIDEO_HEIGHT = 320
NO_VIDEO = "Upload a clip first (mp4, webm, mov or gif)."
RENDER_CHOICES = [
    ("mean over heads", "mean"),
    ("every head", "heads"),
    ("masks in colours", "masks"),
    ("frame | mean", "side"),
]
VideoView = tuple[str, str, str, Any, Any, Any]


def progress_html(status: dict[str, Any] | None) -> str:
    """A ``<progress>`` bar with ``frames_done`` of ``frames_total`` and the job's state and
    times."""
    if not status:
        return (
            '<div id="video-progress-box">'
            '<progress id="video-progress" max="1" value="0"></progress></div>'
        )
    done = int(status.get("frames_done") or 0)
    total = max(int(status.get("frames_total") or 0), 1)
    text = f"{status.get('state', '?')}: {done} / {total} frames"
    if status.get("eta_s") is not None and status.get("state") == "running":
        text += f", about {float(status['eta_s']):.0f} s left"
    if status.get("state") == "done":
        text += f" in {float(status.get('elapsed_s') or 0):.1f} s"
    return (
        '<div id="video-progress-box">'
        f'<progress id="video-progress" max="{total}" value="{done}"></progress>'
        f' <span id="video-progress-text">{html.escape(text)}</span></div>'
    )


def video_inputs(setup: PageSetup) -> dict[str, Any]:
    c: dict[str, Any] = {}
    c["video"] = gr.File(
        label="Clip (mp4, webm, mov, gif)",
        file_types=VIDEO_TYPES,
        type="filepath",
        elem_id="video-input",
    )
    c["model"] = controls.model_dropdown("video-model", setup)
    c["render"] = gr.Radio(RENDER_CHOICES, value="mean", label="Render", elem_id="video-render")
    c["fps"] = gr.Slider(
        0,
        30,
        value=0,
        step=1,
        label="Frames per second (0: the clip's rate, at most 30)",
        elem_id="video-fps",
    )
    c["threshold"] = controls.threshold_slider("video-threshold")
    c["image_size"] = controls.image_size_slider("video-image-size", setup)
    with gr.Row():
        c["run"] = gr.Button("Run on the clip", variant="primary", elem_id="video-run")
        c["cancel"] = gr.Button(  # active (and red) only while a job runs
            "Cancel", variant="secondary", interactive=False, elem_id="video-cancel"
        )
    return c


def video_outputs() -> dict[str, Any]:
    o: dict[str, Any] = {}
    o["progress"] = gr.HTML(progress_html(None), label="Progress", elem_id="video-progress-html")
    o["status"] = gr.Markdown(label="Video status", elem_id="video-status")
    o["job"] = gr.Textbox(label="Job id", interactive=False, elem_id="video-job")
    with gr.Row():
        o["source"] = gr.Video(
            label="Original", interactive=False, elem_id="video-source", height=VIDEO_HEIGHT
        )
        o["result"] = gr.Video(
            label="Attention", interactive=False, elem_id="video-result", height=VIDEO_HEIGHT
        )
    o["files"] = gr.File(
        label="Downloads: attention.mp4, attention.npz",
        file_count="multiple",
        interactive=False,
        elem_id="video-files",
    )
    return o


def _finished(client: AttentionClient, status: dict[str, Any], out_dir: Path) -> VideoView:
    job = status["job"]
    source = video_client.save_source(client, job, out_dir / "source.mp4")
    result = video_client.save_result(client, job, "mp4", out_dir / "attention.mp4")
    arrays = video_client.save_result(client, job, "npz", out_dir / "attention.npz")
    note = " (stopped at max_frames: the clip has more)" if status.get("truncated") else ""
    text = f"Done: {status['frames_done']} frames of job `{job}`{note}."
    if status.get("trained") is False:
        text += f" **{model_handlers.untrained_text(status.get('trained_reason'))}.**"
    return progress_html(status), text, job, str(source), str(result), [str(result), str(arrays)]


class EtaClock:
    """The time left, counting down between the service's updates: the service estimates it
    when frames complete, so while a batch runs its own figure would climb."""

    def __init__(self) -> None:
        self._done: int | None = None
        self._eta: float | None = None
        self._at = 0.0

    def smooth(self, status: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        done = int(status.get("frames_done") or 0)
        if done != self._done or self._eta is None:
            self._done, self._eta, self._at = done, status.get("eta_s"), now
            return status
        return {**status, "eta_s": max(0.0, float(self._eta) - (now - self._at))}


def _follow_job(client: AttentionClient, job: str) -> Generator[VideoView, None, dict[str, Any]]:
    """Yield progress while the job is queued or running; return its final status."""
    clock = EtaClock()
    while True:
        status = handlers.readable_errors(
            "follow the video job", lambda: video_client.job_status(client, job)
        )
        status = clock.smooth(status)
        if status["state"] not in ("queued", "running"):
            return status
        yield (
            progress_html(status),
            f"Job `{job}` is {status['state']}.",
            job,
            gr.skip(),
            gr.skip(),
            gr.skip(),
        )
        time.sleep(POLL_S)


def run_video(
    client: AttentionClient,
    video: str | None,
    model: str | None,
    render: str,
    fps: float,
    threshold: float,
    image_size: float,
) -> Iterator[VideoView]:
    """Submit the clip, yield progress until the job ends, then the two videos and the downloads."""
    if not video:
        raise gr.Error(NO_VIDEO, title="No clip", duration=ERROR_TOAST_S, print_exception=False)
    job = handlers.readable_errors(
        "start the video job",
        lambda: video_client.submit_video(
            client,
            video,
            model or None,
            render,
            float(fps) or None,
            float(threshold),
            int(image_size),
        ),
    )
    status = yield from _follow_job(client, job)
    if status["state"] == "cancelled":
        yield progress_html(status), f"Job `{job}` was cancelled.", job, None, None, None
        return
    if status["state"] == "failed":
        raise gr.Error(
            f"The video job failed: {status.get('error')}",
            title="Video job failed",
            duration=ERROR_TOAST_S,
            print_exception=False,
        )
    out_dir = Path(tempfile.mkdtemp(prefix="dino-video-"))
    yield handlers.readable_errors(
        "download the videos", lambda: _finished(client, status, out_dir)
    )


def cancel_video(client: AttentionClient, job: str | None) -> str:
    """Cancel the job on screen (``DELETE /jobs/{id}``)."""
    if not job:
        return "No video job is running."
    handlers.readable_errors("cancel the video job", lambda: video_client.cancel_job(client, job))
    return f"Cancelling job `{job}` ..."


def build_video_tab(demo: gr.Blocks, client: AttentionClient, setup: PageSetup) -> dict[str, Any]:
    """Lay out the tab (call inside ``gr.Tab``) and wire its events; returns the components."""
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            ins = video_inputs(setup)
        with gr.Column(scale=2):
            outs = video_outputs()

    def models() -> Any:
        return model_handlers.list_models(client)[0]

    def run(
        video: str | None,
        model: str | None,
        render: str,
        fps: float,
        threshold: float,
        image_size: float,
    ) -> Iterator[VideoView]:
        yield from run_video(client, video, model, render, fps, threshold, image_size)

    def cancel(job: str | None) -> str:
        return cancel_video(client, job)

    def model_size(model: str | None) -> Any:  # the size control follows the clip's model
        return model_handlers.size_control(client, model)

    demo.load(models, outputs=[ins["model"]], api_visibility="private")
    ins["model"].input(model_size, [ins["model"]], [ins["image_size"]], api_visibility="private")
    shown = [outs[k] for k in ("progress", "status", "job", "source", "result", "files")]
    ins["run"].click(
        _cancel_button(True), None, [ins["cancel"]], api_visibility="private", queue=False
    )
    ins["run"].click(
        run,
        [ins[k] for k in ("video", "model", "render", "fps", "threshold", "image_size")],
        shown,
        api_name="video",
        concurrency_limit=4,
    ).then(_cancel_button(False), None, [ins["cancel"]], api_visibility="private")
    ins["cancel"].click(cancel, [outs["job"]], [outs["status"]], api_name="video_cancel")
    return {**ins, **outs}


def _cancel_button(active: bool) -> Any:
    """The Cancel button's state: red and active while a job runs, grey and inactive else."""

    def update() -> Any:
        return gr.Button(interactive=active, variant="stop" if active else "secondary")

    return update
