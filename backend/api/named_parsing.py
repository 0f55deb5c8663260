"""Requests with named image fields (``image_a`` / ``image_b``, ``image`` / ``gt_mask``) sent as
multipart file parts or as base64 strings in a JSON object, like ``/attention``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from backend.api.parsing import _b64, _file_bytes, text_fields
from backend.errors import BadRequest, InvalidParameter, UnsupportedMediaType
from backend.settings import Settings


async def parse_named(
    request: Request, settings: Settings, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """``(fields, files)``: the text fields, and the bytes of each named image field present."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    names = (*required, *optional)
    limit = settings.max_upload_bytes
    if ctype == "multipart/form-data":
        form = await request.form(max_files=len(names) + 2, max_fields=32)
        files = {n: await _file_bytes(form[n], n, limit) for n in names if form.get(n) is not None}
        fields = text_fields(form, names)
    elif ctype == "application/json" or ctype.endswith("+json"):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"request body is not valid JSON ({exc})", code="bad_json") from exc
        if not isinstance(body, dict):
            raise InvalidParameter(f"the JSON body must be an object with {', '.join(required)}")
        files = {n: _b64(body[n], n, limit) for n in names if body.get(n) is not None}
        fields = {k: v for k, v in body.items() if k not in names}
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {ctype or '(none)'!r}; send multipart/form-data "
            "(images as file parts) or application/json (images as base64)"
        )
    missing = [n for n in required if n not in files]
    if missing:
        raise InvalidParameter(
            f"{', '.join(missing)} missing; send {' and '.join(required)} as file parts or "
            "base64 JSON fields"
        )
    return fields, files
