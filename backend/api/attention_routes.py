"""``POST /attention`` and ``POST /attention/batch``: maps, masks and overlays of images."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from backend.analysis.params import request_body_schema
from backend.analysis.service import AttentionService
from backend.api.body_schemas import tidy_body
from backend.api.metrics import model_label
from backend.api.parsing import ParsedRequest, parse_request
from backend.api.replies import AttentionBatchReply, AttentionReply, error_responses
from backend.api.responses import analysis_dict, json_response, npz_response
from backend.errors import ServiceError

ATTENTION_ERRORS = error_responses(400, 404, 408, 413, 415, 422, 503)
NPZ = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def attention_router(service: AttentionService) -> APIRouter:
    router = APIRouter(tags=["attention"])
    settings = service.settings

    async def parse_single(request: Request) -> ParsedRequest:
        return await parse_request(request, settings, batch=False)

    async def parse_batch(request: Request) -> ParsedRequest:
        return await parse_request(request, settings, batch=True)

    @router.post(
        "/attention",
        response_model=AttentionReply,
        responses={200: {"content": NPZ}, **ATTENTION_ERRORS},
        openapi_extra=tidy_body(request_body_schema(False, settings.max_batch)),
    )
    def attention(request: Request, parsed: ParsedRequest = Depends(parse_single)) -> Response:
        """Per-head CLS attention of any block, masks, overlays and IoU of one image."""
        request.state.model = model_label(service, parsed.params.model)
        loaded = service.model_for(parsed.params)
        request.state.model = loaded.entry.id
        result = service.analyse(loaded, parsed.params, parsed.images[0], parsed.gt_mask)
        if parsed.params.format == "npz":
            return npz_response([result])
        return json_response(analysis_dict(result))

    @router.post(
        "/attention/batch",
        response_model=AttentionBatchReply,
        responses={200: {"content": NPZ}, **ATTENTION_ERRORS},
        openapi_extra=tidy_body(request_body_schema(True, settings.max_batch)),
    )
    def attention_batch(request: Request, parsed: ParsedRequest = Depends(parse_batch)) -> Response:
        """The same analysis for 1 to DINO_MAX_BATCH images: ``{"results": [...]}``."""
        request.state.model = model_label(service, parsed.params.model)
        loaded = service.model_for(parsed.params)
        request.state.model = loaded.entry.id
        results = []
        for i, image in enumerate(parsed.images):
            try:
                results.append(service.analyse(loaded, parsed.params, image, None))
            except ServiceError as exc:
                raise exc.prefixed(f"images[{i}]: ") from exc
        if parsed.params.format == "npz":
            return npz_response(results, batch=True)
        return json_response({"results": [analysis_dict(r) for r in results]})

    return router
