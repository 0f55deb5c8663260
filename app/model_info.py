"""What the page says about a model's kind: its image-size control and its register tokens.

DINO models default to 480 px and DINOv2 models to 518 px (their training size); the size
control steps in the model's patch size. For models with registers (Darcet et al. 2023) the
page labels the columns and reports the attention the registers absorbed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_IMAGE_SIZE = 1024  # the slider's upper end, rounded down to a multiple of the patch size
FALLBACK_SIZE = 480


def size_settings(entry: dict[str, Any] | None) -> tuple[int, int, int]:
    """(default value, step, maximum) of the size control for one ``GET /models`` entry."""
    entry = entry or {}
    patch = int(entry.get("patch_size") or 8)
    top = max(patch, MAX_IMAGE_SIZE // patch * patch)
    default = int(entry.get("default_image_size") or FALLBACK_SIZE)
    value = min(max(patch, default // patch * patch), top)
    return value, patch, top


def registers_of(result: dict[str, Any]) -> int:
    """How many register tokens the model of an /attention reply has (0 when it says nothing)."""
    return int(result.get("registers") or 0)


def model_title(prefix: str, result: dict[str, Any]) -> str:
    """A column title: ``A: <id>``, with ``(4 registers)`` or ``(no registers)`` for DINOv2."""
    title = f"{prefix}: {result['model']}"
    if result.get("family") != "dinov2":
        return title
    count = registers_of(result)
    return f"{title} ({count} registers)" if count else f"{title} (no registers)"


def register_share(result: dict[str, Any]) -> list[float] | None:
    """Per head, the share of the CLS attention the registers took (None without registers)."""
    reg = result.get("register_attention")
    if not reg:
        return None
    return [round(float(v), 4) for v in np.asarray(reg, dtype=np.float64).sum(axis=1)]


def register_note(result: dict[str, Any]) -> str:
    """A sentence for the status line of a register model ("" for others)."""
    share = register_share(result)
    if share is None:
        return ""
    return (
        f" Registers: {registers_of(result)}, excluded from the maps; they took "
        f"{float(np.mean(share)):.1%} of the CLS attention (mean over heads)."
    )
