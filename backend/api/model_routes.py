"""``GET /models``: every model the service can serve, and why any cannot."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.analysis.service import AttentionService
from backend.api.replies import ModelsReply


def models_router(service: AttentionService) -> APIRouter:
    router = APIRouter(tags=["models"])

    @router.get("/models", response_model=ModelsReply)
    def models() -> dict[str, Any]:
        """The checkpoint folder's files, the zoo ids and the placeholder, with the default."""
        loaded = set(service.registry.loaded_ids())
        return {
            "default": service.default_model,
            "models": [e.public(e.id in loaded) for e in service.registry.entries()],
        }

    return router
