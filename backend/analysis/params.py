"""Request parameters and their OpenAPI description (multipart and JSON bodies)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.errors import InvalidParameter
from backend.settings import MAX_IMAGE_SIZE_SCHEMA

_ALLOWED = {
    "image_size": "an integer between the model's patch size and DINO_MAX_IMAGE_SIZE",
    "threshold": "a number with 0 < threshold <= 1",
    "resize": "keep_aspect or square",
    "format": "json or npz",
    "overlays": "true or false",
    "model": "an id from GET /models",
    "layer": "a block index 0 .. depth-1, or -depth .. -1 counting from the last block",
    "query": 'a patch as "row,col" or [row, col] (0-based, inside the patch grid)',
    "composite": "true or false",
    "heads": 'head indices as a list [0, 2] or "0,2" (each 0 .. heads-1, no repeats)',
    "pca": "true or false",
    "overlay_format": "png, jpeg or webp",
    "precision": "auto, fp32, bf16 or int8 (those this machine runs natively)",
}
PRECISION_FIELD = Field(
    None,
    description="fp32 (the authors' numbers), bf16 autocast, int8 dynamic quantisation, or auto "
    "(the fastest this machine runs natively); default DINO_PRECISION. Modes the machine would "
    "only emulate are refused with 400.",
)


class AttentionParams(BaseModel):
    """Everything except the image(s): see docs/API.md."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model: str | None = Field(
        None, min_length=1, max_length=256, description="an id from GET /models"
    )
    image_size: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGE_SIZE_SCHEMA,
        description="short side (keep_aspect) or side; default: the model's "
        "default_image_size (DINO 480, DINOv2 518, DINOv3 448)",
    )
    resize: Literal["keep_aspect", "square"] = "keep_aspect"
    threshold: float = Field(
        0.6, gt=0, le=1, description="fraction of attention mass each mask keeps"
    )
    overlays: bool = True
    format: Literal["json", "npz"] = "json"
    layer: int = Field(-1, description="block whose attention is shown; -1 is the last")
    query: tuple[int, int] | None = Field(
        None, description="patch (row, col) whose attention is added"
    )
    composite: bool = Field(
        False, description="add the paper's Figure 3 colour composite of the chosen heads"
    )
    heads: list[int] | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="heads of the composite (default all)",
        json_schema_extra={"uniqueItems": True},
    )
    pca: bool = Field(
        False, description="add the first three principal components of the patch tokens"
    )
    overlay_format: Literal["png", "jpeg", "webp"] = "png"
    precision: Literal["auto", "fp32", "bf16", "int8"] | None = PRECISION_FIELD

    @field_validator("query", mode="before")
    @classmethod
    def _query_text(cls, value: Any) -> Any:
        return _int_list(value, "row,col")

    @field_validator("heads", mode="before")
    @classmethod
    def _heads_text(cls, value: Any) -> Any:
        return _int_list(value, "0,2,5")


def _int_list(value: Any, example: str) -> Any:
    """``"1,2"`` (a form field) -> ``[1, 2]``; ``""`` -> None; anything else is left to pydantic."""
    if not isinstance(value, str):
        return value
    text = value.strip().strip("[]()")
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError as exc:
        raise ValueError(f'expected integers like "{example}", got {value!r}') from exc


def _describe(err: dict[str, Any], allowed: dict[str, str], files: str) -> str:
    field = ".".join(str(p) for p in err.get("loc", ())) or "request"
    hint = allowed.get(field)
    if err.get("type") == "extra_forbidden":
        return f"unknown field {field!r}; the fields are {files}, {', '.join(allowed)}"
    return f"{field}: {err.get('msg', 'invalid')}" + (f" (allowed: {hint})" if hint else "")


def invalid_fields(exc: ValidationError, allowed: dict[str, str], files: str) -> InvalidParameter:
    """The 422 for a failed validation: every bad field, with its ``allowed`` values, and for an
    unknown field the list of fields (the file parts ``files`` first)."""
    return InvalidParameter("; ".join(_describe(e, allowed, files) for e in exc.errors()))


def object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A request body's OpenAPI object schema that admits no other field."""
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def validate_params(raw: dict[str, Any]) -> AttentionParams:
    """Parameters from form fields or JSON, or 422 with a message per bad field."""
    if raw.get("model") in ("", None):  # an empty form field means "the default model"
        raw = {k: v for k, v in raw.items() if k != "model"}
    try:
        return AttentionParams.model_validate(raw)
    except ValidationError as exc:
        raise invalid_fields(exc, _ALLOWED, "image, gt_mask") from exc


def _params_properties() -> dict[str, Any]:
    schema = AttentionParams.model_json_schema()
    return schema["properties"]


def _image_list(item: dict[str, Any], max_batch: int) -> dict[str, Any]:
    return {"type": "array", "items": item, "minItems": 1, "maxItems": max_batch}


def request_body_schema(batch: bool, max_batch: int) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for /attention (single) or /attention/batch."""
    params = _params_properties()
    if batch:
        files = {"images": _image_list({"type": "string", "format": "binary"}, max_batch)}
        b64 = {"images": _image_list({"type": "string", "description": "base64 image"}, max_batch)}
        required = ["images"]
    else:
        files = {
            "image": {"type": "string", "format": "binary"},
            "gt_mask": {"type": "string", "format": "binary"},
        }
        b64 = {
            "image": {"type": "string", "description": "base64 image"},
            "gt_mask": {"type": "string", "description": "base64 mask image"},
        }
        required = ["image"]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": object_schema({**files, **params}, required)},
                "application/json": {"schema": object_schema({**b64, **params}, required)},
            },
        }
    }
