"""The Explore tab's events, wired in a fixed order with stable api names.

``analyze`` (Analyse button), ``block`` (Block slider released), ``threshold`` (Threshold slider
released), ``heads`` (composite heads ticked), ``query`` (a patch typed as row,col), ``clear``
(back to the CLS token), ``model_controls`` (Block range and head boxes of a model), ``download``
and ``model_size``; a new image or ground-truth mask and a click on the image rerun privately.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from app import explore_handlers, model_handlers
from app.explore_handlers import ANALYSIS_NAMES
from app.handlers import AttentionClient

PARAM_INPUTS = ("image", "model", "image_size", "resize", "threshold", "gt_mask", "layer", "query")


def _bound(client: AttentionClient, target: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``target(client, ...)`` with the Explore inputs as its named parameters (the api's)."""

    def handler(
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None = None,
        layer: float | None = None,
        query: str | None = None,
        heads: list[int] | None = None,
    ) -> Any:
        return target(
            client, image, model, image_size, resize, threshold, gt_mask, layer, query, heads
        )

    handler.__name__ = handler.__qualname__ = name
    return handler


def _analysis_handlers(client: AttentionClient) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``analyze`` (always analyses) and ``rerun`` (only when an image is there)."""
    return (
        _bound(client, explore_handlers.analyse, "analyze"),
        _bound(client, explore_handlers.rerun_on_change, "rerun"),
    )


def _rethreshold_handler(client: AttentionClient) -> Callable[..., Any]:
    """A rerun that passes the analysis on screen: pictures that stay the same are not resent."""

    def rethreshold(
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None = None,
        layer: float | None = None,
        query: str | None = None,
        heads: list[int] | None = None,
        analysis: dict[str, Any] | None = None,
    ) -> Any:
        return explore_handlers.rerun_on_change(
            client,
            image,
            model,
            image_size,
            resize,
            threshold,
            gt_mask,
            layer,
            query,
            heads,
            previous=analysis,
        )

    return rethreshold


def _select_handler(client: AttentionClient) -> Callable[..., Any]:
    """A click on the processed image: the patch under it becomes the query."""

    def on_select(
        analysis: dict[str, Any] | None,
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None,
        layer: float,
        query: str,
        heads: list[int] | None,
        evt: gr.SelectData,
    ) -> Any:
        query = explore_handlers.patch_at(analysis, *evt.index[:2])
        return (
            query,
            *explore_handlers.rerun_on_change(
                client, image, model, image_size, resize, threshold, gt_mask, layer, query, heads
            ),
        )

    return on_select


def wire_explore(
    client: AttentionClient, ins: dict[str, Any], outs: dict[str, Any], status: Any, state: Any
) -> None:
    """Wire every Explore event, in the order the api names were first given."""
    params = [*(ins[k] for k in PARAM_INPUTS), outs["heads_pick"]]
    shown = [{"status": status, "state": state}.get(k) or outs[k] for k in ANALYSIS_NAMES]
    keep = _keep_last_result(ins, outs, status, state)
    progress = {"show_progress_on": [status]}  # a failure then leaves every panel as it was
    analyze, rerun = _analysis_handlers(client)
    keep(
        ins["analyse"].click(
            analyze, params, shown, api_name="analyze", concurrency_limit=4, **progress
        )
    )
    for source in (ins["image"], ins["gt_mask"]):
        keep(
            source.change(
                rerun,
                params,
                shown,
                api_visibility="private",
                trigger_mode="always_last",
                **progress,
            )
        )
    _wire_controls(client, ins, outs, params, shown, state, rerun, keep)
    _wire_download_and_size(client, ins, state)


def _status_of(shown: list[Any]) -> Any:
    """The status line among an analysis's outputs: the one place its progress is drawn."""
    return shown[ANALYSIS_NAMES.index("status")]


def _keep_last_result(
    ins: dict[str, Any], outs: dict[str, Any], status: Any, state: Any
) -> Callable[[Any], None]:
    """What follows an analysis event: on success the stale note goes; on failure the panels
    keep the last good result, the note and the status line say so (the message says why)."""

    def stale(
        analysis: dict[str, Any] | None, model: str | None, layer: float | None, query: str | None
    ) -> tuple[str, Any]:
        line, note = explore_handlers.stale_view(analysis, model, layer, query)
        return line, gr.Markdown(value=note, visible=bool(note))

    def fresh() -> Any:
        return gr.Markdown(value="", visible=False)

    def keep(event: Any) -> None:
        event.success(fresh, None, [outs["stale"]], api_visibility="private")
        event.failure(
            stale,
            [state, ins["model"], ins["layer"], ins["query"]],
            [status, outs["stale"]],
            api_visibility="private",
        )

    return keep


def _wire_controls(
    client: AttentionClient,
    ins: dict[str, Any],
    outs: dict[str, Any],
    params: list[Any],
    shown: list[Any],
    state: Any,
    rerun: Callable[..., Any],
    keep: Callable[[Any], None],
) -> None:
    """Block slider, threshold, composite heads, query patch, and the model's control ranges."""
    rethreshold = _rethreshold_handler(client)
    opts = {"trigger_mode": "always_last", "show_progress_on": [_status_of(shown)]}
    keep(ins["layer"].release(rerun, params, shown, api_name="block", **opts))
    with_state = [*params, state]
    keep(ins["threshold"].release(rethreshold, with_state, shown, api_name="threshold", **opts))
    keep(outs["heads_pick"].input(rethreshold, with_state, shown, api_name="heads", **opts))
    _wire_query(client, ins, outs, params, shown, state, rerun, keep)

    def model_controls(model: str | None) -> Any:
        return model_handlers.explore_controls(client, model)

    ins["model"].input(  # a user's choice; the page load sets the first model's controls itself
        model_controls,
        [ins["model"]],
        [ins["layer"], outs["heads_pick"]],
        api_name="model_controls",
    )


def _wire_query(
    client: AttentionClient,
    ins: dict[str, Any],
    outs: dict[str, Any],
    params: list[Any],
    shown: list[Any],
    state: Any,
    rerun: Callable[..., Any],
    keep: Callable[[Any], None],
) -> None:
    """The query patch: typed as row,col, cleared back to the CLS token, or clicked on the image."""
    opts = {"trigger_mode": "always_last", "show_progress_on": [_status_of(shown)]}
    keep(ins["query"].submit(rerun, params, shown, api_name="query", **opts))

    def clear(
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None = None,
        layer: float | None = None,
        query: str | None = None,
        heads: list[int] | None = None,
    ) -> Any:
        """The query box emptied (back to the CLS token), then the analysis without a query."""
        values = (image, model, image_size, resize, threshold, gt_mask, layer, "", heads)
        return ("", *explore_handlers.rerun_on_change(client, *values))

    keep(ins["clear"].click(clear, params, [ins["query"], *shown], api_name="clear", **opts))
    keep(
        outs["processed"].select(
            _select_handler(client),
            [state, *params],
            [ins["query"], *shown],
            api_visibility="private",
            **opts,
        )
    )


def _wire_download_and_size(client: AttentionClient, ins: dict[str, Any], state: Any) -> None:
    """The ZIP of the analysis on screen, and the size control that follows the model."""

    def download(analysis: dict[str, Any] | None) -> str:
        return explore_handlers.download(analysis)

    ins["download"].click(download, [state], [ins["zip"]], api_name="download")

    def model_size(model: str | None) -> Any:  # the size control follows the selected model
        return model_handlers.size_control(client, model)

    ins["model"].input(model_size, [ins["model"]], [ins["image_size"]], api_name="model_size")
