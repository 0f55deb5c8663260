"""HTTP client for the attention service (docs/API.md), with readable errors.

Every failure, whether the service is down, slow, or rejects the input, becomes a
:class:`BackendError` whose message a person can act on; nothing here imports torch.
"""

from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_BACKEND_URL = "http://127.0.0.1:8000"
RESIZE_MODES = ("keep_aspect", "square")

_STATUS_MEANING = {
    400: "The service could not use the input",
    404: "Unknown model",
    413: "The upload is too large",
    415: "The file is not an image the service can read",
    422: "A parameter is out of range",
    503: "The service is not ready",
}

ImageInput = str | os.PathLike | bytes


class BackendError(RuntimeError):
    """A request to the attention service failed; ``str(err)`` says why and what to do."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def backend_url_from_env() -> str:
    """The service address from ``BACKEND_URL``, else the loopback default."""
    return os.environ.get("BACKEND_URL", DEFAULT_BACKEND_URL).rstrip("/")


def _detail_text(detail: Any) -> str:
    """FastAPI details are a string, or (validation errors) a list of {loc, msg} objects."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p not in ("body", "query"))
                parts.append(
                    f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item))
                )
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def error_from_response(response: httpx.Response) -> BackendError:
    """Turn a non-2xx answer into a :class:`BackendError` naming the problem."""
    status = response.status_code
    code = None
    try:
        body = response.json()
        detail = _detail_text(body.get("detail", body)) if isinstance(body, dict) else str(body)
        code = body.get("code") if isinstance(body, dict) else None
    except ValueError:
        detail = response.text.strip()[:300] or response.reason_phrase
    meaning = _STATUS_MEANING.get(status, f"The service answered HTTP {status}")
    message = f"{meaning}: {detail}"
    retry_after = response.headers.get("retry-after")
    if status == 503 and retry_after:
        message += f" (retry in {retry_after} s)"
    return BackendError(message, status=status, code=code)


def _image_part(image: ImageInput, name: str) -> tuple[str, bytes, str]:
    if isinstance(image, bytes):
        return name, image, "application/octet-stream"
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BackendError(f"cannot read the file {path.name}: {exc.strerror or exc}") from exc
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return path.name, data, mime


EXPLORE_FIELDS = ("layer", "query", "composite", "heads", "pca", "overlay_format")


def _explore_fields(explore: dict[str, Any]) -> dict[str, str]:
    """Form fields of the explorer parameters (None values are left out: the service's defaults)."""
    unknown = set(explore) - set(EXPLORE_FIELDS)
    if unknown:
        raise BackendError(
            f"unknown parameter {sorted(unknown)[0]!r}; choose from {', '.join(EXPLORE_FIELDS)}"
        )
    data = {}
    for key, value in explore.items():
        if value is None:
            continue
        if isinstance(value, bool):
            data[key] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            data[key] = ",".join(str(int(v)) for v in value)
        else:
            data[key] = str(value)
    return data


class BackendClient:
    """Synchronous client for the attention service; one per app, thread-safe (httpx.Client)."""

    def __init__(
        self,
        base_url: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = (base_url or backend_url_from_env()).rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise BackendError(
                f"The attention service at {self.base_url} is not reachable ({exc}). "
                "Start it with `make run` or `python -m backend`, or set BACKEND_URL."
            ) from exc
        except httpx.TimeoutException as exc:
            raise BackendError(
                f"The attention service at {self.base_url} did not answer within "
                f"{self.timeout:.0f} s; try a smaller image size, or retry."
            ) from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"The request to {self.base_url}{path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError as exc:
            raise BackendError(
                f"The service at {self.base_url}{path} sent a reply that is not JSON; "
                "is BACKEND_URL pointing at the attention service?"
            ) from exc
        if not isinstance(body, dict):
            raise BackendError(
                f"The service at {self.base_url}{path} sent {type(body).__name__}, not an object"
            )
        return body

    def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return self.call_json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """``GET /readyz``; raises :class:`BackendError` (503) until the default model is loaded."""
        return self.call_json("GET", "/readyz")

    def models(self) -> dict[str, Any]:
        """``GET /models``: ``{"default": id, "models": [{"id", "arch", "trained", ...}]}``."""
        body = self.call_json("GET", "/models")
        if not isinstance(body.get("models"), list):
            raise BackendError("The service's /models reply has no 'models' list")
        return body

    def _attention(
        self,
        image: ImageInput,
        fmt: str,
        model: str | None,
        image_size: int,
        resize: str,
        threshold: float,
        overlays: bool,
        gt_mask: ImageInput | None,
        explore: dict[str, Any] | None = None,
    ) -> httpx.Response:
        if resize not in RESIZE_MODES:
            raise BackendError(
                f"unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}"
            )
        files = {"image": _image_part(image, "image")}
        if gt_mask is not None:
            files["gt_mask"] = _image_part(gt_mask, "gt_mask")
        data = {
            "image_size": str(int(image_size)),
            "resize": resize,
            "threshold": repr(float(threshold)),
            "overlays": "true" if overlays else "false",
            "format": fmt,
        }
        if model:
            data["model"] = model
        data.update(_explore_fields(explore or {}))
        return self.request("POST", "/attention", files=files, data=data)

    def attention(
        self,
        image: ImageInput,
        model: str | None = None,
        image_size: int = 480,
        resize: str = "keep_aspect",
        threshold: float = 0.6,
        overlays: bool = True,
        gt_mask: ImageInput | None = None,
        **explore: Any,
    ) -> dict[str, Any]:
        """``POST /attention`` (JSON): per-head maps, masks, coverage, overlays, IoU with
        ``gt_mask``.

        ``explore`` takes the explorer fields of docs/API.md: ``layer``, ``query`` ((row, col) or
        "row,col"), ``composite``, ``heads`` (list of ints), ``pca``, ``overlay_format``.
        """
        response = self._attention(
            image, "json", model, image_size, resize, threshold, overlays, gt_mask, explore
        )
        try:
            body = response.json()
        except ValueError as exc:
            raise BackendError("The service's /attention reply is not JSON") from exc
        for key in ("model", "num_heads", "attentions", "masks", "coverage"):
            if key not in body:
                raise BackendError(
                    f"The service's /attention reply lacks {key!r}; "
                    "is it the DINO attention service?"
                )
        return body

    def attention_npz(
        self,
        image: ImageInput,
        model: str | None = None,
        image_size: int = 480,
        resize: str = "keep_aspect",
        threshold: float = 0.6,
        gt_mask: ImageInput | None = None,
    ) -> bytes:
        """``POST /attention`` with ``format=npz``: the arrays as an ``.npz`` file's bytes."""
        return self._attention(
            image, "npz", model, image_size, resize, threshold, False, gt_mask
        ).content

    def match(
        self,
        image_a: ImageInput,
        image_b: ImageInput,
        model: str | None = None,
        image_size: int = 480,
        **fields: Any,
    ) -> dict[str, Any]:
        """``POST /match``: best buddies, and with ``query`` B's similarity map (docs/API.md)."""
        files = {"image_a": _image_part(image_a, "image_a"), "image_b": _image_part(image_b, "b")}
        data = {"image_size": str(int(image_size)), **{k: str(v) for k, v in fields.items()}}
        if model:
            data["model"] = model
        return self.call_json("POST", "/match", files=files, data=data)

    def objects(
        self,
        image: ImageInput,
        model: str | None = None,
        image_size: int = 480,
        gt_mask: ImageInput | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """``POST /objects``: the LOST (or TokenCut) box, seed and mask, with box IoU."""
        files = {"image": _image_part(image, "image")}
        if gt_mask is not None:
            files["gt_mask"] = _image_part(gt_mask, "gt_mask")
        data = {"image_size": str(int(image_size)), **{k: str(v) for k, v in fields.items()}}
        if model:
            data["model"] = model
        return self.call_json("POST", "/objects", files=files, data=data)
