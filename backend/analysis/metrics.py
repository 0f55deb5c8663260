"""Prometheus metrics, one private registry per app (so several apps can live in one process)."""

from __future__ import annotations

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
