"""Which pictures a new analysis may leave on screen: the ones a threshold change cannot alter.

A threshold, composite-heads or ground-truth change that the service answered from its cache
(``cached``) keeps the image, the heat maps and the PCA of the analysis on screen; the page
skips resending them (``gr.skip()``) and updates only the masks, tables, texts and composite.
"""

from __future__ import annotations

from typing import Any

# The outputs of one analysis (app/explore_handlers.py, by name) that such a change leaves as they
# are: image, heads, mean; query heads, query mean, caption; PCA, PCA foreground.
STATIC_OUTPUTS = frozenset(
    ("processed", "heads", "mean", "query_heads", "query_mean", "query_caption", "pca", "pca_fg")
)
_VIEW_KEYS = ("image_name", "model", "image_size", "resize", "layer", "query")


def same_view(
    previous: dict[str, Any] | None, request: dict[str, Any], result: dict[str, Any]
) -> bool:
    """Whether ``result`` differs from the analysis on screen only in what a threshold or head
    choice changes."""
    if not previous or "request" not in previous or not result.get("cached"):
        return False
    before = previous["request"]
    shown = previous.get("result") or {}
    return (
        all(before.get(k) == request.get(k) for k in _VIEW_KEYS)
        and shown.get("model") == result.get("model")
        and shown.get("overlay_mime") == result.get("overlay_mime")
    )
