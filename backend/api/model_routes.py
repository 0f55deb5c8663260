"""``GET /models``: every model the service can serve, why any cannot, and the limits of a
request (so that a client's controls can offer exactly what the service accepts)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.analysis.service import AttentionService
from backend.api.replies import ModelsReply


def models_router(service: AttentionService) -> APIRouter:
    router = APIRouter(tags=["models"])
    s = service.settings

    @router.get("/models", response_model=ModelsReply)
    def models() -> dict[str, Any]:
        """The checkpoint folder's files, the zoo ids and the placeholder, with the default."""
        loaded = set(service.registry.loaded_ids())
        default = service.default_model
        return {
            "default": default,
            "models": [
                service.registry.public(e, e.id in loaded) for e in service.registry.entries()
            ],
            "limits": {
                "max_image_size": s.max_image_size,
                "max_batch": s.max_batch,
                "max_upload_mb": s.max_upload_bytes / 2**20,
            },
        }

    return router
