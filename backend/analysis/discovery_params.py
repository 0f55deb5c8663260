"""Parameters of ``POST /match`` and ``POST /objects`` (multipart fields or JSON keys)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.analysis.params import PRECISION_FIELD, _int_list, invalid_fields
from backend.settings import MAX_IMAGE_SIZE_SCHEMA
from trainer.model.facets import FACETS

ALLOWED = {
    "model": "an id from GET /models",
    "image_size": "an integer between the model's patch size and DINO_MAX_IMAGE_SIZE",
    "resize": "keep_aspect or square",
    "layer": "a block index 0 .. depth-1, or -depth .. -1 counting from the last block",
    "facet": ", ".join(FACETS),
    "query": 'a patch of image A as "row,col" or [row, col]',
    "top_k": "an integer from 1 to 200",
    "overlay": "true or false",
    "method": "lost or tokencut",
    "k_patches": "an integer from 1 to 1000",
    "precision": "auto, fp32, bf16 or int8 (those this machine runs natively)",
}


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model: str | None = Field(None, min_length=1, max_length=256)
    image_size: int | None = Field(
        None, ge=1, le=MAX_IMAGE_SIZE_SCHEMA, description="default: the model's default size"
    )
    resize: Literal["keep_aspect", "square"] = "keep_aspect"
    precision: Literal["auto", "fp32", "bf16", "int8"] | None = PRECISION_FIELD


class MatchParams(_Common):
    """``POST /match``: best buddies between A and B, and B's similarity to A's ``query``."""

    layer: int = Field(-1, description="block whose facet is compared; -1 is the last")
    facet: Literal["key", "query", "value", "token"] = "key"
    query: tuple[int, int] | None = Field(None, description="patch (row, col) of image A")
    top_k: int = Field(20, ge=1, le=200, description="best-buddy pairs returned")
    overlay: bool = Field(False, description="add both images side by side with the pairs")

    @field_validator("query", mode="before")
    @classmethod
    def _query_text(cls, value: Any) -> Any:
        return _int_list(value, "row,col")


class ObjectsParams(_Common):
    """``POST /objects``: the main object's box without labels (LOST, or TokenCut)."""

    method: Literal["lost", "tokencut"] = "lost"
    k_patches: int = Field(100, ge=1, le=1000, description="LOST's expansion size")
    overlay: bool = Field(True, description="add the photo with the box and the seed drawn")


def validate(model: type[BaseModel], raw: dict[str, Any], files: str) -> Any:
    """``model`` from the request's fields, or 422 naming each bad field and what it allows
    (``files``: the request's file fields, listed first for an unknown field)."""
    try:
        return model.model_validate({k: v for k, v in raw.items() if v not in ("", None)})
    except ValidationError as exc:
        raise invalid_fields(exc, ALLOWED, files) from exc
