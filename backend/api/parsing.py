"""Read /attention requests sent as multipart (file parts) or JSON (base64 strings)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from backend.analysis.params import AttentionParams, validate_params
from backend.errors import (
    BadRequest,
    InvalidParameter,
    TooLarge,
    UnsupportedMediaType,
)
from backend.settings import Settings

FILE_FIELDS = ("image", "images", "gt_mask")


@dataclass
class ParsedRequest:
    """Validated parameters and the raw bytes of the image(s) and optional ground-truth mask."""

    params: AttentionParams
    images: list[bytes]
    gt_mask: bytes | None = None


def _b64(value: Any, field: str, max_bytes: int) -> bytes:
    if not isinstance(value, str):
        raise InvalidParameter(f"{field} must be a base64 string, got {type(value).__name__}")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    text = "".join(text.split())
    if len(text) * 3 // 4 > max_bytes:
        raise TooLarge(
            f"{field} is about {len(text) * 3 / 4 / 2**20:.1f} MB; the limit is "
            f"{max_bytes / 2**20:.1f} MB",
            code="upload_too_large",
        )
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(
            f"{field} is not valid base64 ({exc}); send the file bytes base64-encoded",
            code="bad_base64",
        ) from exc


async def _file_bytes(part: Any, field: str, max_bytes: int) -> bytes:
    if not isinstance(part, UploadFile):
        raise InvalidParameter(
            f"{field} must be a file part (curl -F {field}=@file.jpg), not a text field"
        )
    data = await part.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(
            f"{field} is larger than the limit of {max_bytes / 2**20:.1f} MB",
            code="upload_too_large",
        )
    return data


def text_fields(form: FormData, files: tuple[str, ...] = FILE_FIELDS) -> dict[str, Any]:
    """The form's text fields (each given once), every field but the ``files`` parts."""
    raw: dict[str, Any] = {}
    for key in form.keys():
        if key in files:
            continue
        values = form.getlist(key)
        if len(values) != 1 or not isinstance(values[0], str):
            raise InvalidParameter(f"{key} must be given once, as a text field")
        raw[key] = values[0]
    return raw


async def _from_form(request: Request, settings: Settings, batch: bool) -> ParsedRequest:
    form = await request.form(max_files=settings.max_batch + 8, max_fields=64)
    params = validate_params(text_fields(form))
    limit = settings.max_upload_bytes
    gt = form.get("gt_mask")
    gt_bytes = None if batch or gt is None else await _file_bytes(gt, "gt_mask", limit)
    field = "images" if batch else "image"
    parts = form.getlist(field)
    if not batch and len(parts) > 1:
        raise InvalidParameter("send one image part; use POST /attention/batch for several")
    _check_count(len(parts), field, batch, settings.max_batch)
    images = [
        await _file_bytes(p, f"{field}[{i}]" if batch else field, limit)
        for i, p in enumerate(parts)
    ]
    return ParsedRequest(params, images, gt_bytes)


def _check_count(count: int, field: str, batch: bool, max_batch: int) -> None:
    if count == 0:
        raise InvalidParameter(
            f"{field} is missing; send the image as a file part or base64 JSON field"
        )
    if batch and count > max_batch:
        raise InvalidParameter(
            f"too many images: {count}; a batch holds 1 to {max_batch} images",
            code="too_many_images",
        )


async def _from_json(request: Request, settings: Settings, batch: bool) -> ParsedRequest:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON ({exc})", code="bad_json") from exc
    if not isinstance(body, dict):
        raise InvalidParameter(
            'JSON body must be an object like {"image": "<base64>", "threshold": 0.6}'
        )
    limit = settings.max_upload_bytes
    field = "images" if batch else "image"
    raw = {k: v for k, v in body.items() if k not in (field, "gt_mask")}
    params = validate_params(raw)
    value = body.get(field)
    if batch:
        if value is not None and not isinstance(value, list):
            raise InvalidParameter("images must be a list of base64 strings")
        values = value or []
    else:
        values = [] if value is None else [value]
    _check_count(len(values), field, batch, settings.max_batch)
    images = [_b64(v, f"{field}[{i}]" if batch else field, limit) for i, v in enumerate(values)]
    gt = body.get("gt_mask") if not batch else None
    return ParsedRequest(params, images, None if gt is None else _b64(gt, "gt_mask", limit))


async def parse_request(request: Request, settings: Settings, batch: bool) -> ParsedRequest:
    """Dispatch on Content-Type; anything else is 415 naming the two accepted types."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data" or (
        ctype == "application/x-www-form-urlencoded" and not batch
    ):
        return await _from_form(request, settings, batch)
    if ctype == "application/json" or ctype.endswith("+json"):
        return await _from_json(request, settings, batch)
    raise UnsupportedMediaType(
        f"unsupported Content-Type {ctype or '(none)'!r}; send multipart/form-data "
        "(image as a file part) or application/json (image as base64)"
    )
