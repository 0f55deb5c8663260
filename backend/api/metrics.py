"""The HTTP side of the metrics: a middleware that counts and times every request."""

from __future__ import annotations

import time
from typing import Any

from backend.analysis.metrics import ServiceMetrics
from backend.analysis.service import AttentionService

UNKNOWN_MODEL = "unknown"


def model_label(service: AttentionService, requested: str | None) -> str:
    """The ``model`` label of a request, set before the model is loaded so that its errors
    count under it: the id asked for (or the default), ``unknown`` for an id not listed (labels
    stay bounded)."""
    model_id = requested or service.default_model
    if not model_id:
        return ""
    known = any(e.id == model_id for e in service.registry.entries())
    return model_id if known else UNKNOWN_MODEL


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
