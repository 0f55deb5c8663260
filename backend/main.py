"""FastAPI app factory: ``uvicorn backend.main:app`` or ``python -m backend``.

Importing this module is cheap: models are chosen and loaded in the lifespan.
Torch work runs in plain ``def`` routes (FastAPI's thread pool); request bodies are parsed
by async dependencies first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from backend.analysis.service import AttentionService
from backend.api.body_limit import BodyLimitMiddleware
from backend.api.metrics import MetricsMiddleware
from backend.api.parsing import ParsedRequest, parse_request
from backend.api.responses import analysis_dict, json_response, npz_response
from backend.api.schemas import request_body_schema
from backend.api.video_routes import VIDEO_PATH, VideoFeature, video_router
from backend.errors import ServiceError, install_error_handlers
from backend.settings import Settings

log = logging.getLogger(__name__)


def _add_ops_routes(app: FastAPI, service: AttentionService) -> None:
    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> Response:
        if service.ready:
            return JSONResponse({"ready": True, "default_model": service.default_model})
        reason = service.default_error or "starting"
        detail = f"default model {service.default_model!r} is not loaded: {reason}"
        return JSONResponse(
            {
                "ready": False,
                "default_model": service.default_model,
                "detail": detail,
                "code": "not_ready",
            },
            status_code=503,
        )

    @app.get("/models", tags=["models"])
    def models() -> dict[str, Any]:
        loaded = set(service.registry.loaded_ids())
        return {
            "default": service.default_model,
            "models": [e.public(e.id in loaded) for e in service.registry.entries()],
        }

    @app.get("/metrics", tags=["ops"])
    def metrics() -> Response:
        return service.metrics.render()


def _add_attention_routes(app: FastAPI, service: AttentionService) -> None:
    settings = service.settings

    async def parse_single(request: Request) -> ParsedRequest:
        return await parse_request(request, settings, batch=False)

    async def parse_batch(request: Request) -> ParsedRequest:
        return await parse_request(request, settings, batch=True)

    @app.post(
        "/attention",
        tags=["attention"],
        openapi_extra=request_body_schema(False, settings.max_batch),
    )
    def attention(request: Request, parsed: ParsedRequest = Depends(parse_single)) -> Response:
        """Per-head last-block CLS attention, masks, overlays and IoU of one image (docs/API.md)."""
        loaded = service.model_for(parsed.params)
        request.state.model = loaded.entry.id
        result = service.analyse(loaded, parsed.params, parsed.images[0], parsed.gt_mask)
        if parsed.params.format == "npz":
            return npz_response([result])
        return json_response(analysis_dict(result))

    @app.post(
        "/attention/batch",
        tags=["attention"],
        openapi_extra=request_body_schema(True, settings.max_batch),
    )
    def attention_batch(request: Request, parsed: ParsedRequest = Depends(parse_batch)) -> Response:
        """The same analysis for 1 to DINO_MAX_BATCH images: ``{"results": [...]}``."""
        loaded = service.model_for(parsed.params)
        request.state.model = loaded.entry.id
        results = []
        for i, image in enumerate(parsed.images):
            try:
                results.append(service.analyse(loaded, parsed.params, image, None))
            except ServiceError as exc:
                exc.detail = f"images[{i}]: {exc.detail}"
                raise
        if parsed.params.format == "npz":
            return npz_response(results, batch=True)
        return json_response({"results": [analysis_dict(r) for r in results]})


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
    _add_ops_routes(app, service)
    _add_attention_routes(app, service)
    app.include_router(video_router(video))
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
