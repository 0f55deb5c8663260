"""Parameters of ``POST /attention/video`` (form fields besides the ``video`` file part)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backend.analysis.params import PRECISION_FIELD, invalid_fields
from backend.video.render import RENDERS

_ALLOWED = {
    "model": "an id from GET /models",
    "image_size": "an integer between the model's patch size and DINO_MAX_IMAGE_SIZE",
    "resize": "keep_aspect or square",
    "threshold": "a number with 0 < threshold <= 1",
    "fps": "frames per second to sample, 0 < fps <= 60 (default: the source rate, at most 30)",
    "max_frames": "an integer from 1 to DINO_VIDEO_MAX_FRAMES",
    "render": ", ".join(RENDERS),
    "layer": "a block index of the model (default: the last block)",
}


class VideoParams(BaseModel):
    """What to compute for every sampled frame and how to draw it (see docs/API.md)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model: str | None = Field(None, min_length=1, max_length=256)
    image_size: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="default: the model's default_image_size (DINO 480, DINOv2 518)",
    )
    resize: Literal["keep_aspect", "square"] = "keep_aspect"
    threshold: float = Field(0.6, gt=0, le=1)
    fps: float | None = Field(None, gt=0, le=60)
    max_frames: int | None = Field(None, ge=1)
    render: Literal["mean", "heads", "masks", "side"] = "mean"
    layer: int | None = None
    precision: Literal["auto", "fp32", "bf16", "int8"] | None = PRECISION_FIELD


def validate_video_params(raw: dict[str, Any]) -> VideoParams:
    """Form fields -> parameters, or 422 naming every bad field and its allowed values."""
    raw = {
        k: v for k, v in raw.items() if v not in ("", None)
    }  # an empty field means "the default"
    try:
        return VideoParams.model_validate(raw)
    except ValidationError as exc:
        raise invalid_fields(exc, _ALLOWED, "video") from exc
