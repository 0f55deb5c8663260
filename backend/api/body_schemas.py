"""OpenAPI request bodies that say what the service accepts, so schema-driven clients (and
fuzzers) send what it can take: a form field has no null (leaving it out means the default), an
image is a non-empty file part or base64 string, and the body is required."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from backend.analysis.params import object_schema

_FILE = {"type": "string", "format": "binary", "minLength": 1}
_BASE64 = {"type": "string", "minLength": 1, "description": "base64 image"}


_INT_LIST = r"^[0-9]+( *, *[0-9]+)*$"


def form_property(schema: dict[str, Any], empty_is_default: bool = True) -> dict[str, Any]:
    """``schema`` of a parameter as a form field: no ``null`` variant (leave the field out),
    a list of integers as one comma-separated text ("0,2"), and, on endpoints where an empty
    field means the default (``empty_is_default``), an empty text allowed where an enum is."""
    variants = [v for v in schema.get("anyOf", ()) if v.get("type") != "null"]
    out = copy.deepcopy(schema)
    if len(variants) == 1:
        out = {k: v for k, v in out.items() if k not in ("anyOf", "default")}
        out.update(copy.deepcopy(variants[0]))
    if out.get("type") == "array":
        items = out.get("prefixItems") or [out.get("items", {})]
        if all(i.get("type") == "integer" for i in items):
            keep = {k: out[k] for k in ("title", "description") if k in out}
            fixed = len(out.get("prefixItems", ()))
            pattern = r"^[0-9]+" + r" *, *[0-9]+" * (fixed - 1) + "$" if fixed else _INT_LIST
            return {**keep, "type": "string", "pattern": pattern}
    if empty_is_default and "enum" in out and out.get("type") == "string":
        out["enum"] = [*out["enum"], ""]
    return out


def form_properties(params: type[BaseModel]) -> dict[str, Any]:
    """The form-field schemas of ``params``' fields (no null variants)."""
    props = params.model_json_schema()["properties"]
    return {name: form_property(schema) for name, schema in props.items()}


def named_body_schema(
    params: type[BaseModel], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``requestBody`` of an endpoint with named images: multipart file parts or base64 JSON."""
    names = (*required, *optional)
    json_props = params.model_json_schema()["properties"]
    multipart = object_schema({**{n: _FILE for n in names}, **form_properties(params)}, [*required])
    as_json = object_schema({**{n: _BASE64 for n in names}, **json_props}, [*required])
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "application/json": {"schema": as_json},
            },
        }
    }


def video_body_schema(params: type[BaseModel]) -> dict[str, Any]:
    """``requestBody`` of ``POST /attention/video``: multipart, the clip and text fields."""
    props = {"video": _FILE, **form_properties(params)}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": object_schema(props, ["video"])}},
        }
    }


def _tidy_object(schema: dict[str, Any], form: bool) -> None:
    for name, prop in list(schema.get("properties", {}).items()):
        if form:
            prop = schema["properties"][name] = form_property(prop, empty_is_default=False)
        items = prop.get("items", prop)
        if items.get("type") == "string" and (
            items.get("format") == "binary" or "base64" in items.get("description", "")
        ):
            items["minLength"] = 1  # an empty image is never accepted


def tidy_body(extra: dict[str, Any]) -> dict[str, Any]:
    """A ``requestBody`` with the form rules above applied: multipart fields without null,
    image parts and base64 strings non-empty."""
    out = copy.deepcopy(extra)
    for ctype, media in out["requestBody"]["content"].items():
        _tidy_object(media["schema"], form=ctype == "multipart/form-data")
    return out
