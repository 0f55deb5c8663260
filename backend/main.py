"""FastAPI app factory: ``uvicorn backend.main:app`` or ``python -m backend``.

Importing this module is cheap: models are chosen and loaded in the lifespan.
Torch work runs in plain ``def`` routes (FastAPI's thread pool); request bodies are parsed
by async dependencies first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from backend.analysis.discovery_engine import DiscoveryEngine
from backend.analysis.service import AttentionService
from backend.api.attention_routes import attention_router
from backend.api.body_limit import BodyLimitMiddleware
from backend.api.discovery_routes import discovery_router
from backend.api.docs_routes import install_docs
from backend.api.finite_json import FiniteJSONResponse
from backend.api.metrics import MetricsMiddleware
from backend.api.model_routes import models_router
from backend.api.ops_routes import ops_router
from backend.api.video_routes import VIDEO_PATH, VideoFeature, video_router
from backend.errors import install_error_handlers
from backend.settings import Settings

log = logging.getLogger(__name__)


FORM_ROOM = 1 << 20  # the text fields and the multipart framing beside the files


def body_limits(settings: Settings) -> dict[str, tuple[int, str]]:
    """Per-path body limits, so a body is read no further than its images can need: an image
    and a mask (base64 in JSON is 4/3 of the bytes), a batch of images, a video."""
    image = -(-settings.max_upload_bytes * 4 // 3)
    cap = (settings.max_request_bytes, "DINO_MAX_REQUEST_MB")

    def tighter(need: int, name: str) -> tuple[int, str]:
        return (need, name) if need < cap[0] else cap

    return {
        "/attention": tighter(2 * image + FORM_ROOM, "DINO_MAX_UPLOAD_MB"),
        "/attention/batch": tighter(
            settings.max_batch * image + FORM_ROOM, "DINO_MAX_UPLOAD_MB x DINO_MAX_BATCH"
        ),
        "/match": tighter(2 * image + FORM_ROOM, "DINO_MAX_UPLOAD_MB"),
        "/objects": tighter(2 * image + FORM_ROOM, "DINO_MAX_UPLOAD_MB"),
        VIDEO_PATH: (settings.max_video_bytes + FORM_ROOM, "DINO_MAX_VIDEO_MB"),
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing heavy happens until the lifespan starts."""
    settings = settings or Settings()
    service = AttentionService(settings)
    video = VideoFeature(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(service.start)
        await anyio.to_thread.run_sync(video.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(video.close)

    app = FastAPI(
        title="DINO attention service",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc come from install_docs, with local assets
        redoc_url=None,
        default_response_class=FiniteJSONResponse,  # never a bare NaN in a reply
        description="Last-block per-head attention maps and masks of DINO ViTs (see docs/API.md).",
    )
    app.state.service = service
    app.state.video = video
    install_error_handlers(app)
    install_docs(app)
    for router in (
        ops_router(service),
        models_router(service),
        attention_router(service),
        discovery_router(DiscoveryEngine(service)),
        video_router(video),
    ):
        app.include_router(router)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        path_limits=body_limits(settings),
        timeout_s=settings.body_timeout_s,
    )
    return app


app = create_app()
