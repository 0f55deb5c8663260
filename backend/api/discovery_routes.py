"""``POST /match`` (dense correspondences) and ``POST /objects`` (LOST / TokenCut boxes)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request

from backend.analysis.discovery_engine import DiscoveryEngine
from backend.analysis.discovery_overlays import match_overlay, objects_overlay
from backend.analysis.discovery_params import MatchParams, ObjectsParams, validate
from backend.api.body_schemas import named_body_schema
from backend.api.metrics import model_label
from backend.api.named_parsing import parse_named
from backend.api.replies import MatchReply, ObjectsReply, error_responses
from backend.api.responses import json_response
from backend.models.registry import trained_fields

ERRORS = error_responses(400, 404, 408, 413, 415, 422, 503)


def _model_fields(loaded: Any, params: Any) -> dict[str, Any]:
    return {
        "model": loaded.entry.id,
        "family": loaded.info.family,
        "patch_size": loaded.info.patch_size,
        **trained_fields(loaded.info.trained),
        "image_size": params.image_size,
        "precision": params.precision,
    }


def discovery_router(engine: DiscoveryEngine) -> APIRouter:
    router = APIRouter(tags=["features"])
    settings = engine.service.settings

    @router.post(
        "/match",
        response_model=MatchReply,
        responses=ERRORS,
        openapi_extra=named_body_schema(MatchParams, ("image_a", "image_b")),
    )
    async def match(request: Request) -> Any:
        """Best-buddy correspondences of image_a and image_b, and B's similarity to a patch."""
        fields, files = await parse_named(request, settings, ("image_a", "image_b"))
        params = validate(MatchParams, fields, "image_a, image_b")
        request.state.model = model_label(engine.service, params.model)
        return await _in_thread(request, lambda: _match(engine, params, files))

    @router.post(
        "/objects",
        response_model=ObjectsReply,
        responses=ERRORS,
        openapi_extra=named_body_schema(ObjectsParams, ("image",), ("gt_mask",)),
    )
    async def objects(request: Request) -> Any:
        """The main object's box without labels: LOST (default) or TokenCut on the keys."""
        fields, files = await parse_named(request, settings, ("image",), ("gt_mask",))
        params = validate(ObjectsParams, fields, "image, gt_mask")
        request.state.model = model_label(engine.service, params.model)
        return await _in_thread(request, lambda: _objects(engine, params, files))

    return router


async def _in_thread(request: Request, work: Any) -> Any:
    """Run the torch work in the thread pool (the parsing above ran on the event loop)."""
    body, model_id = await anyio.to_thread.run_sync(work)
    request.state.model = model_id
    return json_response(body)


def _match(engine: DiscoveryEngine, params: MatchParams, files: dict[str, bytes]):
    loaded, params, result, a, b = engine.match(params, files["image_a"], files["image_b"])
    body = {
        **_model_fields(loaded, params),
        "layer": a.features.layer,
        "facet": params.facet,
        "grid_a": list(result.grid_a),
        "grid_b": list(result.grid_b),
        "matches": result.matches,
        "query": None if params.query is None else list(params.query),
        "similarity": result.similarity,
        "best_match": None if result.best_match is None else list(result.best_match),
    }
    if params.overlay:
        body["overlay"] = match_overlay(
            a.picture, b.picture, result.matches, loaded.info.patch_size
        )
    return body, loaded.entry.id


def _objects(engine: DiscoveryEngine, params: ObjectsParams, files: dict[str, bytes]):
    loaded, params, result, picture, scale = engine.objects(
        params, files["image"], files.get("gt_mask")
    )
    body = {
        **_model_fields(loaded, params),
        "method": result.method,
        "boxes": result.boxes,
        "seed": list(result.seed),
        "mask": [[int(v) for v in row] for row in result.mask],
        "grid": list(result.grid),
        "box_iou": result.box_iou,
        "gt_box": result.gt_box,
    }
    if params.overlay:
        body["overlay"] = objects_overlay(
            picture, result.boxes[0], result.seed, loaded.info.patch_size, scale, result.gt_box
        )
    return body, loaded.entry.id
