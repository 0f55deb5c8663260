"""Prometheus metrics, one private registry per app (so several apps can live in one process)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    """Requests, latency, errors and inference time, labelled by endpoint and model."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dino_requests_total",
            "HTTP requests",
            ["endpoint", "method", "status", "model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dino_request_latency_seconds",
            "HTTP request latency",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "dino_errors_total",
            "error responses",
            ["endpoint", "code", "model"],
            registry=self.registry,
        )
        self.inference = Histogram(
            "dino_inference_seconds",
            "model forward time",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "dino_inferences_in_flight", "inferences running now", registry=self.registry
        )
        self.map_cache = Counter(
            "dino_map_cache_total",
            "map cache lookups of /attention (hit: no model run)",
            ["result"],
            registry=self.registry,
        )
        self.loaded_models = Gauge(
            "dino_loaded_models", "models held in memory", registry=self.registry
        )

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Pure ASGI (so exceptions keep their handlers): counts and times every HTTP request.

    The route template is the ``endpoint`` label; handlers put the model id in
    ``request.state.model``.
    """

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen = {"status": 500, "code": ""}

        async def observing_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["code"] = dict(message.get("headers", [])).get(b"x-error-code", b"").decode()
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            self._record(scope, seen["status"], seen["code"], time.perf_counter() - start)

    def _record(self, scope: dict[str, Any], status: int, code: str, seconds: float) -> None:
        endpoint = getattr(scope.get("route"), "path", None) or "unmatched"
        model = str((scope.get("state") or {}).get("model", ""))
        self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status), model).inc()
        self.metrics.latency.labels(endpoint, model).observe(seconds)
        if status >= 400:
            self.metrics.errors.labels(endpoint, code or str(status), model).inc()
