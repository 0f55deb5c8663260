"""JSON that is always valid: NaN and Infinity (which ``json`` writes as bare words no JSON
parser accepts) become ``null``, with a warning in the log. Validated model metadata keeps them
out of the maps; this is the last lock on the door for every reply."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def finite_dumps(content: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes NaN or Infinity (they become null)."""
    try:
        return json.dumps(content, allow_nan=False, **kwargs)
    except ValueError:
        log.warning("a reply held NaN or Infinity; they were sent as null")
        return json.dumps(_finite(content), allow_nan=False, **kwargs)


class FiniteJSONResponse(JSONResponse):
    """FastAPI's JSON reply, with NaN and Infinity sent as null instead of failing."""

    def render(self, content: Any) -> bytes:
        return finite_dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
