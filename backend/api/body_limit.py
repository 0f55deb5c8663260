"""ASGI middleware that refuses request bodies over ``DINO_MAX_REQUEST_MB`` before reading them.

``path_limits`` gives some paths their own limit (the video upload's ``DINO_MAX_VIDEO_MB``).
A body that has not arrived ``timeout_s`` after the request started is refused with 408, so a
slow client cannot hold a worker (``DINO_BODY_TIMEOUT_S``).
"""

from __future__ import annotations

import json
import time
from typing import Any

import anyio

from backend.errors import BodyTimeout, TooLarge

Scope = dict[str, Any]


class BodyLimitMiddleware:
    """413 from Content-Length at once; bodies without one are counted as they arrive."""

    def __init__(
        self,
        app: Any,
        max_bytes: int,
        path_limits: dict[str, tuple[int, str]] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = path_limits or {}
        self.timeout_s = timeout_s

    def _limit(self, scope: Scope) -> tuple[int, str]:
        return self.path_limits.get(scope.get("path", ""), (self.max_bytes, "DINO_MAX_REQUEST_MB"))

    @staticmethod
    def _message(limit: tuple[int, str]) -> str:
        return f"request body is larger than the limit of {limit[0] / 2**20:.1f} MB ({limit[1]})"

    async def _refuse(self, send: Any, limit: tuple[int, str]) -> None:
        body = json.dumps({"detail": self._message(limit), "code": "request_too_large"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-error-code", b"request_too_large"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit[0]:
            await self._refuse(send, limit)
            return
        seen = 0
        deadline = time.monotonic() + self.timeout_s

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen
            left = deadline - time.monotonic()
            with anyio.move_on_after(max(left, 0.0)) as scope:
                message = await receive()
            if scope.cancelled_caught:
                raise BodyTimeout(
                    f"the request body did not arrive within {self.timeout_s:g} s "
                    "(DINO_BODY_TIMEOUT_S); send it at once"
                )
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit[0]:
                    raise TooLarge(self._message(limit), code="request_too_large")
            return message

        await self.app(scope, counting_receive, send)
