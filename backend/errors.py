"""Domain errors and their one mapping to HTTP: every error body is ``{"detail", "code"}``."""

from __future__ import annotations

import copy
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error a client can act on; ``status`` and ``code`` say which kind."""

    status = 400
    code = "bad_request"

    def __init__(
        self, detail: str, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.code
        self.headers = headers or {}

    def prefixed(self, prefix: str) -> ServiceError:
        """A new error of the same kind whose detail starts with ``prefix`` (this one unchanged)."""
        err = copy.copy(self)
        err.detail = prefix + self.detail
        err.args = (err.detail,)
        return err


_ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/:,()]+/)+([^\s'\"/:,()]+)")


def without_paths(text: str) -> str:
    """``text`` (a library's error message) with each absolute file path shortened to the file's
    name: replies speak of files by name, never by where the server keeps them."""
    return _ABS_PATH.sub(r"\1", text)


def exception_text(exc: BaseException) -> str:
    """A readable reason for ``exc`` without server paths (an OSError: its strerror)."""
    strerror = getattr(exc, "strerror", None)  # OSError, and FFmpeg's errors (PyAV)
    if isinstance(strerror, str) and strerror:
        return strerror
    return without_paths(str(exc)) or type(exc).__name__


class BadImage(ServiceError):
    status = 400
    code = "bad_image"


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class UnknownModel(ServiceError):
    status = 404
    code = "unknown_model"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


class NotAnImage(ServiceError):
    status = 415
    code = "not_an_image"


class InvalidParameter(ServiceError):
    status = 422
    code = "invalid_parameter"


class JobNotFound(ServiceError):
    status = 404
    code = "unknown_job"


class TooManyJobs(ServiceError):
    status = 429
    code = "too_many_jobs"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class NotAVideo(ServiceError):
    status = 415
    code = "not_a_video"


class BadVideo(ServiceError):
    status = 400
    code = "bad_video"


class BodyTimeout(ServiceError):
    status = 408
    code = "body_timeout"


class ModelUnavailable(ServiceError):
    status = 503
    code = "model_unavailable"


class Busy(ServiceError):
    status = 503
    code = "busy"


def error_response(
    status: int, detail: str, code: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"detail": detail, "code": code},
        status_code=status,
        headers={**(headers or {}), "X-Error-Code": code},
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "form"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _leaf_routes(routes: list) -> list:
    """Every endpoint route, also inside included routers (FastAPI may keep them nested)."""
    out = []
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None)
        inner = inner if inner is not None else getattr(route, "routes", None)
        out.extend(_leaf_routes(inner) if inner is not None else [route])
    return out


def _allowed_methods(request: Request) -> str:
    """The methods the app's routes accept for this path, e.g. ``GET, DELETE``."""
    methods: set[str] = set()
    path = request.url.path
    for route in _leaf_routes(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods - {"HEAD"})) or "GET"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into ``{"detail", "code"}`` JSON."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.detail, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc), "invalid_parameter")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}.get(
            exc.status_code, "http_error"
        )
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            detail = f"no such endpoint {request.url.path}; see /docs for the endpoints"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            allowed = _allowed_methods(request)  # every route of the path, not the first
            headers["Allow"] = allowed
            detail = f"{request.method} is not allowed on {request.url.path}; use {allowed}"
        return error_response(exc.status_code, detail, code, headers)

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
        log.info("client disconnected during %s %s", request.method, request.url.path)
        detail = "the client disconnected before the body was read"
        return error_response(400, detail, "disconnected")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal error; the server log has the details", "internal")
