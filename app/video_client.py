"""The video-job calls of the attention service (``POST /attention/video``, ``/jobs/...``), over a
:class:`app.client.BackendClient`'s connection, with the same readable errors."""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path
from typing import Any

from app.client import BackendError
from app.handlers import AttentionClient

RENDERS = ("mean", "heads", "masks", "side")
RESULT_FORMATS = ("mp4", "npz", "json")
CLIENT_HEADER = "X-Dino-Client"  # the service counts its per-client job limit per browser session
_SESSION = re.compile(r"[A-Za-z0-9_-]{1,64}")


def session_headers() -> dict[str, str]:
    """``X-Dino-Client`` with the browser session of the Gradio event being handled, so each
    browser gets its own video-job limit rather than sharing the app's; empty outside one."""
    from gradio.context import LocalContext

    session = getattr(LocalContext.request.get(None), "session_hash", None)
    return {CLIENT_HEADER: session} if session and _SESSION.fullmatch(session) else {}


def submit_video(
    client: AttentionClient,
    video: str | Path,
    model: str | None = None,
    render: str = "mean",
    fps: float | None = None,
    threshold: float = 0.6,
    image_size: int = 480,
    max_frames: int | None = None,
) -> str:
    """Queue a job for the clip at ``video``; returns the job id."""
    if render not in RENDERS:
        raise BackendError(f"unknown render {render!r}; choose one of {', '.join(RENDERS)}")
    path = Path(video)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read the file {path.name}: {exc.strerror or exc}") from exc
    fields = {
        "render": render,
        "threshold": repr(float(threshold)),
        "image_size": str(int(image_size)),
    }
    if model:
        fields["model"] = model
    if fps:
        fields["fps"] = repr(float(fps))
    if max_frames:
        fields["max_frames"] = str(int(max_frames))
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body = client.call_json(
        "POST",
        "/attention/video",
        files={"video": (path.name, data, mime)},
        data=fields,
        headers=session_headers(),
    )
    if "job" not in body:
        raise BackendError(
            "The service's /attention/video reply has no job id; is it the DINO attention service?"
        )
    return str(body["job"])


def job_status(client: AttentionClient, job: str) -> dict[str, Any]:
    """``GET /jobs/{job}``: state, frames_done, frames_total, truncated, elapsed_s, eta_s, error."""
    return client.call_json("GET", f"/jobs/{job}")


def cancel_job(client: AttentionClient, job: str) -> None:
    """``DELETE /jobs/{job}``: cancels a queued or running job, deletes a finished one."""
    client.request("DELETE", f"/jobs/{job}")


def save_result(client: AttentionClient, job: str, fmt: str, dest: Path) -> Path:
    """Download the job's ``mp4``, ``npz`` or ``json`` result to ``dest``."""
    if fmt not in RESULT_FORMATS:
        raise BackendError(
            f"unknown result format {fmt!r}; choose one of {', '.join(RESULT_FORMATS)}"
        )
    dest.write_bytes(client.request("GET", f"/jobs/{job}/result", params={"format": fmt}).content)
    return dest


def save_source(client: AttentionClient, job: str, dest: Path) -> Path:
    """Download the input as browser-playable MP4 (``GET /jobs/{job}/source``) to ``dest``."""
    dest.write_bytes(client.request("GET", f"/jobs/{job}/source").content)
    return dest
