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
QUERY_INDEX = PARAM_INPUTS.index("query")


def _bound(client: AttentionClient, target: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``target(client, ...)`` with the Explore inputs as its named parameters (the api's)."""

    def handler(
        image: str | None,
        model: str | None,
        image_size: float,
        resize: str,
        threshold: float,
        gt_mask: str | None,
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
        gt_mask: str | None,
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
    analyze, rerun = _analysis_handlers(client)
    ins["analyse"].click(analyze, params, shown, api_name="analyze", concurrency_limit=4)
    ins["image"].change(rerun, params, shown, api_visibility="private", trigger_mode="always_last")
    ins["gt_mask"].change(
        rerun, params, shown, api_visibility="private", trigger_mode="always_last"
    )
    _wire_controls(client, ins, outs, params, shown, state, rerun)
    _wire_download_and_size(client, ins, state)


def _wire_controls(
    client: AttentionClient,
    ins: dict[str, Any],
    outs: dict[str, Any],
    params: list[Any],
    shown: list[Any],
    state: Any,
    rerun: Callable[..., Any],
) -> None:
    """Block slider, threshold, composite heads, query patch, and the model's control ranges."""
    rethreshold = _rethreshold_handler(client)
    ins["layer"].release(rerun, params, shown, api_name="block", trigger_mode="always_last")
    ins["threshold"].release(
        rethreshold, [*params, state], shown, api_name="threshold", trigger_mode="always_last"
    )
    outs["heads_pick"].input(
        rethreshold, [*params, state], shown, api_name="heads", trigger_mode="always_last"
    )
    _wire_query(client, ins, outs, params, shown, state, rerun)

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
) -> None:
    """The query patch: typed as row,col, cleared back to the CLS token, or clicked on the image."""
    ins["query"].submit(rerun, params, shown, api_name="query", trigger_mode="always_last")

    def clear(*values: Any) -> Any:
        values = list(values)
        values[QUERY_INDEX] = ""  # the query box: back to the CLS token
        return ("", *explore_handlers.rerun_on_change(client, *values))

    ins["clear"].click(clear, params, [ins["query"], *shown], api_name="clear")
    outs["processed"].select(
        _select_handler(client),
        [state, *params],
        [ins["query"], *shown],
        api_visibility="private",
        trigger_mode="always_last",
    )


def _wire_download_and_size(client: AttentionClient, ins: dict[str, Any], state: Any) -> None:
    """The ZIP of the analysis on screen, and the size control that follows the model."""

    def download(analysis: dict[str, Any] | None) -> str:
        return explore_handlers.download(analysis)

    ins["download"].click(download, [state], [ins["zip"]], api_name="download")

    def model_size(model: str | None) -> Any:  # the size control follows the selected model
        return model_handlers.size_control(client, model)

    ins["model"].input(model_size, [ins["model"]], [ins["image_size"]], api_name="model_size")
