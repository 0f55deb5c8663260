"""``POST /attention/video`` and ``/jobs/...``: video attention as background jobs.

``VideoFeature`` owns the job store; the app's lifespan calls ``start()`` (which recovers the jobs
of a previous run) and ``close()``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile

from backend.analysis.images import check_processed_size
from backend.api.body_schemas import video_body_schema
from backend.api.replies import JobReply, JobSubmitted, error_responses
from backend.errors import InvalidParameter, ServiceError, TooLarge, error_response
from backend.models.registry import trained_fields
from backend.settings import Settings
from backend.video.io import VIDEO_EXTENSIONS, probe, target_fps
from backend.video.jobs import ACTIVE, Job, JobState, JobStore
from backend.video.params import VideoParams, validate_video_params
from backend.video.runner import RESULT_FILES, SOURCE_FILE, VideoJobRunner

log = logging.getLogger(__name__)
VIDEO_PATH = "/attention/video"
MEDIA_TYPES = {"mp4": "video/mp4", "npz": "application/octet-stream", "json": "application/json"}
_CHUNK = 1 << 20
BINARY = {"schema": {"type": "string", "format": "binary"}}
RESULT_CONTENT = {"video/mp4": BINARY, "application/octet-stream": BINARY, "application/json": {}}


class VideoFeature:
    """The job store and the runner, created when the service starts."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.settings: Settings = service.settings
        self._store: JobStore | None = None
        self.runner: VideoJobRunner | None = None

    def start(self) -> None:
        s = self.settings
        self._store = JobStore(
            Path(s.cache_dir) / "jobs",
            s.video_job_ttl_s,
            s.video_jobs_per_client,
            s.video_max_jobs,
            s.video_workers,
            s.stop_grace_s,
        )
        self.runner = VideoJobRunner(self.service, self._store, s.video_batch)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise ServiceError("the video service is starting; retry in a moment", code="not_ready")
        return self._store


async def _save_upload(part: Any, dest: Path, max_bytes: int) -> str:
    """Copy the ``video`` part to ``dest`` in chunks (413 past ``max_bytes``); its file name."""
    if not isinstance(part, UploadFile):
        raise InvalidParameter(
            "video must be a file part (curl -F video=@clip.mp4), not a text field"
        )
    written = 0
    with open(dest, "wb") as fh:
        while chunk := await part.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise TooLarge(
                    f"the video is larger than the limit of {max_bytes / 2**20:.0f} MB "
                    "(DINO_MAX_VIDEO_MB)",
                    code="upload_too_large",
                )
            fh.write(chunk)
    if written == 0:
        raise ServiceError("the video file is empty (0 bytes); upload a clip", code="bad_video")
    return part.filename or "video"


def _plan(feature: VideoFeature, params: VideoParams, path: Path) -> dict[str, Any]:
    """Probe the upload and check every limit before queueing; the job's saved parameters."""
    s = feature.settings
    service = feature.service
    info = probe(path, s.video_max_duration_s, s.video_max_pixels)
    max_frames = params.max_frames or s.video_max_frames
    if max_frames > s.video_max_frames:
        raise InvalidParameter(
            f"max_frames {max_frames} is above the limit; use 1 to {s.video_max_frames} "
            "(DINO_VIDEO_MAX_FRAMES)"
        )
    loaded = service.model_for(params)
    patch = loaded.info.patch_size
    params = service.with_defaults(loaded, params)
    check_processed_size(
        info.width, info.height, params.image_size, params.resize, patch, s.max_image_size
    )
    layer = service.resolve_layer(loaded, -1 if params.layer is None else params.layer)
    fps = target_fps(params.fps, info.fps)
    estimate = min(
        max_frames,
        max(1, math.ceil(info.duration_s * fps - 1e-6)) if info.duration_s else max_frames,
    )
    source = {
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "duration_s": info.duration_s,
        "codec": info.codec,
    }
    return {
        "request": params.model_dump(),
        "model": loaded.entry.id,
        **trained_fields(loaded.info.trained),
        "layer_used": layer,
        "fps_used": fps,
        "max_frames": max_frames,
        "max_pixels": s.video_max_pixels,
        "frames_estimate": estimate,
        "source": source,
    }


CLIENT_HEADER = "X-Dino-Client"
_CLIENT_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_LOOPBACK = ("127.0.0.1", "::1")


def _client_id(request: Request, trusted_proxies: str = "") -> str:
    """Whom the per-client job limit counts: the peer address, refined by ``X-Dino-Client``
    (a browser session of the web app) when the peer is loopback or a trusted proxy. A header
    that is not 1 to 64 letters, digits, - or _ is ignored."""
    host = request.client.host if request.client else "unknown"
    trusted = {p.strip() for p in trusted_proxies.split(",") if p.strip()} | set(_LOOPBACK)
    session = request.headers.get(CLIENT_HEADER, "")
    if host in trusted and _CLIENT_TOKEN.fullmatch(session):
        return f"{host}/{session}"
    return host


def _add_submit_route(router: APIRouter, feature: VideoFeature) -> None:
    @router.post(
        VIDEO_PATH,
        status_code=202,
        tags=["video"],
        response_model=JobSubmitted,
        responses=error_responses(400, 404, 413, 415, 422, 429, 503),
        openapi_extra=video_body_schema(VideoParams),
    )
    async def submit(request: Request) -> JSONResponse:
        """Queue a video job: multipart with a ``video`` file part; 202 with the job id."""
        s = feature.settings
        form = await request.form(max_files=1, max_fields=16)
        fields = {k: v for k, v in form.items() if k != "video"}
        if any(not isinstance(v, str) for v in fields.values()):
            raise InvalidParameter(
                "only the video field may be a file; send the parameters as text fields"
            )
        params = validate_video_params(fields)
        part = form.get("video")
        if part is None:
            raise InvalidParameter(
                "video is missing; send the clip as a multipart file part named video"
            )
        store = feature.store
        staging = store.root / f".upload-{secrets.token_hex(8)}"
        try:
            name = await _save_upload(part, staging, s.max_video_bytes)
            plan = await anyio.to_thread.run_sync(_plan, feature, params, staging)
            client = _client_id(request, s.trusted_proxies)
            job = store.create(client, {**plan, "filename": name})
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        suffix = Path(name).suffix.lower()
        job.input_name = "input" + (suffix if suffix in VIDEO_EXTENSIONS else "")
        staging.replace(store.folder(job) / job.input_name)
        store.save(job)
        assert feature.runner is not None
        store.submit(job, feature.runner)
        return JSONResponse(
            {"job": job.id, "status_url": f"/jobs/{job.id}"},
            status_code=202,
            headers={"Location": f"/jobs/{job.id}"},
        )


def _not_done(job: Job) -> JSONResponse:
    detail = f"job {job.id} is {job.state}" + (f": {job.error}" if job.error else "")
    detail += "; poll GET /jobs/{id} until state is done" if job.state in ACTIVE else ""
    return JSONResponse(
        {"detail": detail, "code": "job_not_done", "state": job.state},
        status_code=409,
        headers={"X-Error-Code": "job_not_done"},
    )


def _file_reply(job: Job, path: Path, media_type: str, filename: str) -> Response:
    """The file of a done job; 404 JSON when it is no longer on disk (it is stat'ed once here,
    so the reply cannot fail half-way for a file deleted before it started)."""
    try:
        stat_result = os.stat(path)
    except OSError:
        return error_response(
            404,
            f"the {path.name} file of job {job.id} is no longer on the server; submit the video "
            "again",
            "result_missing",
        )
    return FileResponse(path, media_type=media_type, filename=filename, stat_result=stat_result)


def _add_job_routes(router: APIRouter, feature: VideoFeature) -> None:
    @router.get(
        "/jobs/{job_id}",
        tags=["video"],
        response_model=JobReply,
        responses=error_responses(404, 422),
    )
    def job_status(job_id: str) -> dict[str, Any]:
        """State, progress (frames_done of frames_total), elapsed_s, eta_s and error of a job."""
        return feature.store.get(job_id).public()

    @router.delete(
        "/jobs/{job_id}",
        tags=["video"],
        status_code=202,
        response_model=JobReply,
        responses={204: {"description": "a finished job deleted"}, **error_responses(404, 422)},
    )
    def job_delete(job_id: str) -> Response:
        """Cancel a queued or running job (202); delete a finished one and its files (204)."""
        store = feature.store
        job = store.get(job_id)
        if job.state in ACTIVE:
            store.cancel(job)
            return JSONResponse(job.public(), status_code=202)
        store.delete(job)
        return Response(status_code=204)

    @router.get(
        "/jobs/{job_id}/result",
        tags=["video"],
        responses={200: {"content": RESULT_CONTENT}, **error_responses(404, 409, 422)},
    )
    def job_result(
        job_id: str,
        format: str = Query("mp4", json_schema_extra={"enum": list(RESULT_FILES)}),  # noqa: A002
    ) -> Response:
        """The attention video (mp4), the arrays (npz) or the summary (json); 409 until done."""
        if format not in RESULT_FILES:
            return error_response(
                422,
                f"unknown format {format!r}; choose one of {', '.join(RESULT_FILES)}",
                "invalid_parameter",
            )
        job = feature.store.get(job_id)
        if job.state != JobState.DONE:
            return _not_done(job)
        path = feature.store.folder(job) / RESULT_FILES[format]
        return _file_reply(job, path, MEDIA_TYPES[format], f"attention_{job.id}.{format}")

    @router.get(
        "/jobs/{job_id}/source",
        tags=["video"],
        responses={200: {"content": {"video/mp4": BINARY}}, **error_responses(404, 409, 422)},
    )
    def job_source(job_id: str) -> Response:
        """The analysed frames of the input as browser-playable H.264 MP4 (at the job's fps)."""
        job = feature.store.get(job_id)
        if job.state != JobState.DONE:
            return _not_done(job)
        path = feature.store.folder(job) / SOURCE_FILE
        return _file_reply(job, path, "video/mp4", f"source_{job.id}.mp4")


def video_router(feature: VideoFeature) -> APIRouter:
    """The video endpoints, served by ``feature``."""
    router = APIRouter()
    _add_submit_route(router, feature)
    _add_job_routes(router, feature)
    return router
