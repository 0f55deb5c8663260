"""What the page says about a model's kind: its image-size control and its register tokens.

DINO models default to 480 px and DINOv2 models to 518 px (their training size); the size
control steps in the model's patch size. For models with registers (Darcet et al. 2023) the
page labels the columns and reports the attention the registers absorbed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# the slider's upper end until the service's ``GET /models`` ``limits.max_image_size`` is known
# (the service's own default limit); it is then rounded down to a multiple of the patch size
UNKNOWN_MAX_IMAGE_SIZE = 2048
FALLBACK_SIZE = 480


def max_image_size(catalog: dict[str, Any] | None) -> int:
    """The largest ``image_size`` the service accepts (``limits.max_image_size`` of /models)."""
    limits = (catalog or {}).get("limits") or {}
    value = limits.get("max_image_size") if isinstance(limits, dict) else None
    return int(value) if isinstance(value, int | float) and value > 0 else UNKNOWN_MAX_IMAGE_SIZE


def size_settings(
    entry: dict[str, Any] | None, limit: int = UNKNOWN_MAX_IMAGE_SIZE
) -> tuple[int, int, int]:
    """(default value, step, maximum) of the size control for one ``GET /models`` entry, with
    the service's ``limit`` on image_size."""
    entry = entry or {}
    patch = int(entry.get("patch_size") or 8)
    top = max(patch, int(limit) // patch * patch)
    default = int(entry.get("default_image_size") or FALLBACK_SIZE)
    value = min(max(patch, default // patch * patch), top)
    return value, patch, top


def registers_of(result: dict[str, Any]) -> int:
    """How many register tokens the model of an /attention reply has (0 when it says nothing)."""
    return int(result.get("registers") or 0)


def model_title(prefix: str, result: dict[str, Any]) -> str:
    """A column title: ``A: <id>``, with ``(4 registers)`` or ``(no registers)`` for DINOv2,
    ``(4 storage tokens)`` for DINOv3, and ``random weights`` for an untrained model."""
    title = f"{prefix}: {result['model']}"
    count = registers_of(result)
    if result.get("family") == "dinov2":
        title += f" ({count} registers)" if count else " (no registers)"
    elif result.get("family") == "dinov3":
        title += f" ({count} storage tokens)"
    if result.get("trained") is False:
        title += ", random weights"
    return title


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
