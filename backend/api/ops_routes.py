"""``/healthz``, ``/readyz`` and ``/metrics``: what operators and orchestrators poll."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from backend.analysis.service import AttentionService
from backend.api.replies import HealthReply, ReadyReply

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def ops_router(service: AttentionService) -> APIRouter:
    router = APIRouter(tags=["ops"])

    @router.get("/healthz", response_model=HealthReply)
    def healthz() -> HealthReply:
        """The process is up (it may still be loading its default model)."""
        return HealthReply()

    @router.get(
        "/readyz",
        response_model=ReadyReply,
        responses={503: {"model": ReadyReply, "description": "the default model is not loaded"}},
    )
    def readyz() -> Response:
        """Ready once the default model is loaded; 503 with the reason until then."""
        if service.ready:
            return JSONResponse({"ready": True, "default_model": service.default_model})
        reason = service.default_error or "starting"
        detail = f"default model {service.default_model!r} is not loaded: {reason}"
        body = ReadyReply(
            ready=False, default_model=service.default_model, detail=detail, code="not_ready"
        )
        return JSONResponse(body.model_dump(), status_code=503)

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {PROMETHEUS_TEXT: {}}, "description": "Prometheus text"}},
    )
    def metrics() -> Response:
        """Prometheus metrics: requests, latency, inference time, cache hits, in-flight."""
        return service.metrics.render()

    return router
