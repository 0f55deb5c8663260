"""What every event handler shares: the client it calls, its checked inputs, readable errors.

Every failure surfaces as ``gr.Error`` with a readable message (never a traceback): a missing
image, an unreachable or busy service, a rejected upload, a reply that cannot be displayed.
The handlers themselves live by tab: app/explore_handlers.py, app/compare_handlers.py and
app/model_handlers.py (the model list and the controls that follow the chosen model).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import gradio as gr
import httpx

from app import rendering
from app.client import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")

NO_IMAGE = "Upload an image or pick one of the examples first."
ERROR_TOAST_S = 30  # how long an error's message stays on the page (its close button ends it)
APP_OVERLAY_FORMAT = "jpeg"  # the fastest of the service's overlay formats to encode


class AttentionClient(Protocol):
    """What the handlers need from :class:`app.client.BackendClient` (tests pass a fake)."""

    base_url: str

    def models(self) -> dict[str, Any]: ...

    def match(
        self, image_a: Any, image_b: Any, model: str | None = None, image_size: int = 480, **f: Any
    ) -> dict[str, Any]: ...

    def objects(
        self,
        image: Any,
        model: str | None = None,
        image_size: int = 480,
        gt_mask: Any = None,
        **f: Any,
    ) -> dict[str, Any]: ...

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any call of the service (the video jobs use it), errors raised as BackendError."""
        ...

    def call_json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """:meth:`request` whose reply is a JSON object."""
        ...

    def attention(
        self,
        image: Any,
        model: str | None = None,
        image_size: int = 480,
        resize: str = "keep_aspect",
        threshold: float = 0.6,
        overlays: bool = True,
        gt_mask: Any = None,
        **explore: Any,
    ) -> dict[str, Any]: ...


def readable_errors(action: str, call: Callable[[], T]) -> T:
    """Run ``call``; turn service and display failures into ``gr.Error`` naming ``action``."""
    try:
        return call()
    except gr.Error:
        raise
    except BackendError as exc:
        raise gr.Error(
            str(exc), title=f"Could not {action}", duration=ERROR_TOAST_S, print_exception=False
        ) from exc
    except rendering.RenderError as exc:
        raise gr.Error(
            f"The service's reply cannot be shown: {exc}",
            title=f"Could not {action}",
            duration=ERROR_TOAST_S,
            print_exception=False,
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        log.exception("unexpected reply while trying to %s", action)
        raise gr.Error(
            f"The service's reply is not what the app expects ({type(exc).__name__}: {exc}); "
            "is BACKEND_URL pointing at the attention service?",
            title=f"Could not {action}",
            duration=ERROR_TOAST_S,
            print_exception=False,
        ) from exc


def check_inputs(image: str | None, threshold: float, image_size: float) -> None:
    """Raise ``gr.Error`` for a missing image, a threshold outside (0, 1] or a size below 1 px."""
    if not image:
        raise gr.Error(NO_IMAGE, title="No image", duration=ERROR_TOAST_S, print_exception=False)
    if not 0.0 < float(threshold) <= 1.0:
        raise gr.Error(
            f"threshold must be in (0, 1], got {threshold}",
            duration=ERROR_TOAST_S,
            print_exception=False,
        )
    if int(image_size) < 1:
        raise gr.Error(
            f"image size must be a positive number of pixels, got {image_size}",
            duration=ERROR_TOAST_S,
            print_exception=False,
        )


def request_record(
    image: str,
    model: str | None,
    image_size: float,
    resize: str,
    threshold: float,
    gt_mask: str | None,
) -> dict[str, Any]:
    """The parameters of one analysis, as recorded in the download's result.json."""
    return {
        "image_name": Path(image).name,
        "model": model or None,
        "image_size": int(image_size),
        "resize": resize,
        "threshold": float(threshold),
        "gt_mask_name": Path(gt_mask).name if gt_mask else None,
    }


def call_attention(
    client: AttentionClient,
    image: str,
    model: str | None,
    request: dict[str, Any],
    gt_mask: str | None,
) -> dict[str, Any]:
    """``POST /attention`` for ``request``; with the Explore tab's fields when it has them."""
    explore: dict[str, Any] = {}
    if "layer" in request:  # the Explore tab: block, query, composite and PCA, fast overlays
        explore = {
            "layer": request["layer"],
            "query": request["query"],
            "heads": request["heads"] or None,
            "composite": request["heads"] != [],
            "pca": True,
            "overlay_format": APP_OVERLAY_FORMAT,
        }
    return client.attention(
        image,
        model=model or None,
        image_size=request["image_size"],
        resize=request["resize"],
        threshold=request["threshold"],
        overlays=True,
        gt_mask=gt_mask or None,
        **explore,
    )


KEPT_NOTE = (
    "**Last good result** shown above, kept on screen: the latest request failed (the message "
    "says why and what to do)."
)


def keep_on_failure(event: Any, status: Any) -> Any:
    """After ``event`` fails, its pictures stay and ``status`` says they are the last good
    result (the event draws its progress on ``status`` only, so no panel is badged)."""

    def kept() -> str:
        return KEPT_NOTE

    event.failure(kept, None, [status], api_visibility="private")
    return event
