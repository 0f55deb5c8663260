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

from backend.analysis.service import AttentionService
from backend.api.attention_routes import attention_router
from backend.api.body_limit import BodyLimitMiddleware
from backend.api.metrics import MetricsMiddleware
from backend.api.model_routes import models_router
from backend.api.ops_routes import ops_router
from backend.api.video_routes import VIDEO_PATH, VideoFeature, video_router
from backend.errors import install_error_handlers
from backend.settings import Settings

log = logging.getLogger(__name__)


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
        description="Last-block per-head attention maps and masks of DINO ViTs (see docs/API.md).",
    )
    app.state.service = service
    app.state.video = video
    install_error_handlers(app)
    for router in (
        ops_router(service),
        models_router(service),
        attention_router(service),
        video_router(video),
    ):
        app.include_router(router)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    video_limit = (
        settings.max_video_bytes + (1 << 20),
        "DINO_MAX_VIDEO_MB",
    )  # + room for the form fields
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        path_limits={VIDEO_PATH: video_limit},
    )
    return app


app = create_app()
