"""The OpenAPI contract says what the service takes and returns: required bodies on every
POST, form fields the way a form sends them, the binary replies' media types, and 405 replies
whose Allow lists every method of the path."""

from __future__ import annotations

import re

import pytest
import torch
from fastapi.testclient import TestClient

from backend.main import create_app
from tests.service_helpers import image_bytes, isolated_settings, write_tiny_checkpoint
from trainer.model.lost import lost_from_affinity


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    s = isolated_settings(tmp_path_factory.mktemp("schema"), default_model="tiny")
    write_tiny_checkpoint(s.checkpoint_dir, "tiny")
    with TestClient(create_app(s)) as c:
        c.spec = c.get("/openapi.json").json()
        yield c


def _body(spec: dict, path: str) -> dict:
    return spec["paths"][path]["post"]["requestBody"]


@pytest.mark.parametrize(
    "path", ["/attention", "/attention/batch", "/match", "/objects", "/attention/video"]
)
def test_every_post_declares_a_required_body_and_form_fields_without_null(client, path):
    body = _body(client.spec, path)
    assert body["required"] is True
    form = body["content"]["multipart/form-data"]["schema"]["properties"]
    for name, prop in form.items():
        assert "null" not in str(prop.get("anyOf", "")), (name, prop)
        if prop.get("format") == "binary" or prop.get("type") == "array":
            assert (prop.get("items") or prop).get("minLength") == 1, name


def test_list_fields_are_one_text_that_the_service_parses(client):
    form = _body(client.spec, "/attention")["content"]["multipart/form-data"]["schema"]
    heads, query = form["properties"]["heads"], form["properties"]["query"]
    assert heads["type"] == query["type"] == "string"
    assert re.fullmatch(heads["pattern"], "0, 1") and not re.fullmatch(query["pattern"], "1,2,3")
    assert "" not in form["properties"]["resize"]["enum"]  # /attention: give a value or none
    objects = _body(client.spec, "/objects")["content"]["multipart/form-data"]["schema"]
    assert "" in objects["properties"]["resize"]["enum"]  # an empty field: the default
    png = {"image": ("a.png", image_bytes(32, 32), "image/png")}
    data = {"query": "1, 2", "heads": "0", "composite": "true", "image_size": "32"}
    r = client.post("/attention", files=png, data=data)
    assert r.status_code == 200, r.text
    assert r.json()["composite_heads"] == [0]


def test_binary_replies_declare_their_media_types(client):
    paths = client.spec["paths"]
    result = paths["/jobs/{job_id}/result"]["get"]["responses"]["200"]["content"]
    source = paths["/jobs/{job_id}/source"]["get"]["responses"]["200"]["content"]
    assert {"video/mp4", "application/octet-stream", "application/json"} <= set(result)
    assert "video/mp4" in source
    assert paths["/jobs/{job_id}/result"]["get"]["parameters"][1]["schema"]["enum"] == [
        "mp4",
        "npz",
        "json",
    ]


@pytest.mark.parametrize(
    ("path", "allow"),
    [("/jobs/abc", "DELETE, GET"), ("/attention", "POST"), ("/models", "GET")],
)
def test_a_405_lists_every_method_of_the_path(client, path, allow):
    r = client.options(path)
    assert r.status_code == 405 and r.headers["allow"] == allow
    assert r.json()["detail"].endswith(f"use {allow}")


def test_lost_scores_bf16_features_as_fp32():
    torch.manual_seed(0)
    feats = torch.randn(12, 16)
    affinity = feats @ feats.T
    ours = lost_from_affinity(affinity.bfloat16(), (3, 4), k_patches=5)
    reference = lost_from_affinity(affinity.bfloat16().float(), (3, 4), k_patches=5)
    assert ours.seed == reference.seed and ours.box == reference.box
    assert ours.scores.dtype == torch.float32


def test_objects_with_automatic_precision_is_not_a_server_error(client):
    png = {"image": ("a.png", image_bytes(32, 32), "image/png")}
    for precision in ("auto", "bf16", "fp32"):
        r = client.post("/objects", files=png, data={"precision": precision, "image_size": "32"})
        assert r.status_code in (200, 400), (precision, r.text)  # 400: not native here
    r = client.post("/objects", files=png, data={"resize": "", "image_size": "32"})
    assert r.status_code == 200, r.text  # an empty field, as the schema allows: the default
