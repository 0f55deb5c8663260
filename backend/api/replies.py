"""The service's replies as pydantic models: what ``/docs`` and ``/openapi.json`` show.

The routes build their JSON with :mod:`backend.api.responses` (fast, no per-float validation);
these models are the contract that docs/API.md describes, and ``tests/test_backend_schema.py``
checks real replies against them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorReply(BaseModel):
    """Every 4xx/5xx: a sentence saying what is wrong and what is allowed, and a stable code."""

    detail: str = Field(description="what is wrong and what is allowed")
    code: str = Field(description="a stable machine-readable code, also in X-Error-Code")
    state: str | None = Field(None, description="a video job's state (409 job_not_done only)")


TRAINED_REASON_DOC = (
    "null for trained weights; for random weights why their maps still show structure: "
    '"random weights: structure here comes from colour, not learning"'
)


class HealthReply(BaseModel):
    status: str = "ok"


class ReadyReply(BaseModel):
    ready: bool
    default_model: str | None
    detail: str | None = None
    code: str | None = None


class ModelInfo(BaseModel):
    """One entry of ``GET /models``. ``available`` only when the weights are here (``status``
    ``ready``); otherwise ``status`` says ``download on first use``, ``not downloadable here`` or
    ``unavailable``, ``error`` the short reason and ``detail`` the full one."""

    id: str
    arch: str | None
    patch_size: int | None
    num_heads: int | None
    source: str = Field(description="file | zoo | placeholder")
    layout: str | None = Field(description="the weights' file layout")
    which: str
    loaded: bool
    available: bool
    status: str = Field(
        description="ready | download on first use | not downloadable here | unavailable"
    )
    trained: bool
    trained_reason: str | None = Field(None, description=TRAINED_REASON_DOC)
    error: str | None = Field(description="why it cannot be served now, in a few words")
    detail: str | None = Field(None, description="the full reason (e.g. the download's error)")
    summary: str | None
    depth: int | None
    family: str | None = Field(description="dino | dinov2 | dinov3")
    registers: int | None = Field(description="register (DINOv2) or storage (DINOv3) tokens")
    default_image_size: int | None
    model_config = ConfigDict(extra="allow")


class Limits(BaseModel):
    max_image_size: int = Field(description="the largest image_size (DINO_MAX_IMAGE_SIZE)")
    max_batch: int = Field(description="images per /attention/batch (DINO_MAX_BATCH)")
    max_upload_mb: float = Field(description="one uploaded file (DINO_MAX_UPLOAD_MB)")


class ModelsReply(BaseModel):
    default: str | None
    models: list[ModelInfo]
    limits: Limits


class AttentionReply(BaseModel):
    """``POST /attention`` with ``format=json`` (docs/API.md lists every field)."""

    model: str
    arch: str
    patch_size: int
    num_heads: int
    trained: bool
    trained_reason: str | None = Field(description=TRAINED_REASON_DOC)
    summary: str | None
    source: str
    layout: str
    family: str
    registers: int
    grid: list[int] = Field(description="[rows, cols] of patches")
    image_size: list[int] = Field(description="[height, width] of the processed image")
    params: dict[str, Any]
    timings_ms: dict[str, float]
    layer: int
    depth: int
    cached: bool
    precision: str = Field(description="the precision that ran: fp32, bf16 or int8")
    attentions: list[list[list[float]]] = Field(description="heads x rows x cols")
    mean_attention: list[list[float]]
    masks: list[list[list[int]]]
    coverage: list[float]
    register_attention: list[list[float]] | None
    query_register_attention: list[list[float]] | None = None
    query: list[int] | None = None
    query_attentions: list[list[list[float]]] | None = None
    query_mean: list[list[float]] | None = None
    pca_rgb: list[list[list[float]]] | None = None
    pca_fg: list[list[int]] | None = None
    composite_heads: list[int] | None = None
    composite_colors: list[list[int]] | None = None
    overlays: dict[str, Any] | None = None
    overlay_mime: str | None = None
    iou: list[float] | None = None
    best_head: int | None = None
    best_iou: float | None = None
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class AttentionBatchReply(BaseModel):
    results: list[AttentionReply]


class _FeatureReply(BaseModel):
    model: str
    family: str
    patch_size: int
    trained: bool
    trained_reason: str | None = Field(description=TRAINED_REASON_DOC)
    image_size: int
    precision: str
    model_config = ConfigDict(protected_namespaces=())


class MatchReply(_FeatureReply):
    """``POST /match``: grids are [rows, cols]; matches are [row_a, col_a, row_b, col_b, cos]."""

    layer: int
    facet: str
    grid_a: list[int]
    grid_b: list[int]
    matches: list[list[float]] = Field(description="best buddies, most similar first")
    query: list[int] | None
    similarity: list[list[float]] | None = Field(description="B's grid: cosine to A's query")
    best_match: list[int] | None = Field(description="B's patch most similar to the query")
    overlay: str | None = Field(None, description="base64 PNG: A and B side by side, the pairs")


class ObjectsReply(_FeatureReply):
    """``POST /objects``: boxes are [x0, y0, x1, y1] in the uploaded image's pixels."""

    method: str
    boxes: list[list[float]]
    seed: list[int] = Field(description="[row, col] of the seed patch")
    mask: list[list[int]] = Field(description="the seed's expanded patch mask, rows x cols")
    grid: list[int]
    box_iou: float | None = Field(description="IoU with gt_mask's bounding box, when sent")
    gt_box: list[int] | None
    overlay: str | None = Field(None, description="base64 PNG: the photo, box and seed drawn")


class JobSubmitted(BaseModel):
    job: str
    status_url: str


class JobReply(BaseModel):
    """``GET /jobs/{id}``: state, progress and the job's plan."""

    job: str
    state: str = Field(description="queued | running | done | failed | cancelled")
    frames_done: int
    frames_total: int
    truncated: bool
    elapsed_s: float
    eta_s: float | None
    error: str | None
    params: dict[str, Any]
    created_at: float
    finished_at: float | None


ERROR_STATUSES = {
    400: "bad request (an undecodable image, a malformed body)",
    404: "unknown model, job or route",
    408: "the request body did not arrive within DINO_BODY_TIMEOUT_S",
    409: "a job that is not done yet",
    413: "an upload, body or image over its limit",
    415: "not an image or not a video file",
    422: "a parameter out of range or of the wrong type",
    429: "too many video jobs for this client or the service",
    503: "busy (Retry-After), not ready, or a model that cannot be loaded",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses, all with :class:`ErrorReply`."""
    return {
        status: {"model": ErrorReply, "description": ERROR_STATUSES[status]} for status in statuses
    }
