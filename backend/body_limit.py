"""ASGI middleware that refuses request bodies over ``DINO_MAX_REQUEST_MB`` before reading them."""

from __future__ import annotations

import json
from typing import Any

from backend.errors import TooLarge

Scope = dict[str, Any]


class BodyLimitMiddleware:
    """413 from Content-Length at once; bodies without one are counted as they arrive."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return f"request body is larger than the limit of {self.max_bytes / 2**20:.1f} MB (DINO_MAX_REQUEST_MB)"

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": self._message(), "code": "request_too_large"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"x-error-code", b"request_too_large"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(self._message(), code="request_too_large")
            return message

        await self.app(scope, counting_receive, send)
