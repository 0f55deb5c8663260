"""Property tests against /openapi.json: at least 500 generated requests, never a 5xx."""

from __future__ import annotations

import base64

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.main import create_app
from tests.service_helpers import (
    check_no_server_error,
    image_bytes,
    isolated_settings,
    write_tiny_checkpoint,
)

CASES: list[int] = []
SMALL = {"max_image_size": 96, "max_pixels": 200_000, "max_upload_mb": 0.5}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    cfg = isolated_settings(tmp_path_factory.mktemp("schema"), **SMALL)
    write_tiny_checkpoint(cfg.checkpoint_dir, "tiny")
    application = create_app(cfg)
    with TestClient(application):  # runs the lifespan: the default model is loaded
        yield application


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


OPERATIONS = [
    ("get", "/healthz", 5),
    ("get", "/readyz", 5),
    ("get", "/models", 5),
    ("get", "/metrics", 5),
    ("post", "/attention", 300),
    ("post", "/attention/batch", 200),
]


@pytest.mark.parametrize(("method", "path", "examples"), OPERATIONS)
def test_no_server_error_from_schema_cases(api_schema, method, path, examples):
    check_no_server_error(api_schema[path][method.upper()], examples, CASES)


@given(
    size=st.integers(1, 70),
    width=st.integers(1, 90),
    height=st.integers(1, 90),
    image_size=st.one_of(st.integers(-5, 200), st.text(max_size=4)),
    threshold=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just("0.5"), st.none()),
    resize=st.sampled_from(["keep_aspect", "square", "bogus"]),
    fmt=st.sampled_from(["json", "npz", "xml"]),
    overlays=st.sampled_from([True, False, "maybe"]),
    as_json=st.booleans(),
)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
def test_valid_images_with_arbitrary_parameters(
    app, size, width, height, image_size, threshold, resize, fmt, overlays, as_json
):
    png = image_bytes(width, height, seed=size)
    params = {"image_size": image_size, "resize": resize, "format": fmt, "overlays": overlays}
    if threshold is not None:
        params["threshold"] = threshold
    client = TestClient(app)
    if as_json:
        r = client.post("/attention", json={"image": base64.b64encode(png).decode(), **params})
    else:
        r = client.post(
            "/attention",
            files={"image": ("a.png", png, "image/png")},
            data={k: str(v) for k, v in params.items()},
        )
    CASES.append(r.status_code)
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 400, 413, 422), r.text


def test_enough_cases_ran():
    assert len(CASES) >= 500, len(CASES)
    assert any(c == 200 for c in CASES) and any(400 <= c < 500 for c in CASES)


def test_every_json_success_reply_has_a_schema_and_errors_are_declared(app):
    """Each JSON endpoint documents its 200/202 body; errors use ErrorReply, not FastAPI's
    HTTPValidationError (which the service never returns); /metrics is text."""
    spec = TestClient(app).get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    json_paths = [
        "/healthz",
        "/readyz",
        "/models",
        "/attention",
        "/attention/batch",
        "/jobs/{job_id}",
    ]
    for path in json_paths:
        for operation in spec["paths"][path].values():
            ok = operation["responses"].get("200") or operation["responses"]["202"]
            assert ok["content"]["application/json"]["schema"], (path, ok)
    for path, ops in spec["paths"].items():
        for operation in ops.values():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorReply"), (path, status)
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]


def test_real_replies_match_their_models(app):
    from backend.api.replies import AttentionReply, ErrorReply, ModelsReply

    c = TestClient(app)
    ModelsReply.model_validate(c.get("/models").json())
    files = {"image": ("a.png", image_bytes(40, 32), "image/png")}
    r = c.post("/attention", files=files, data={"overlays": "false", "image_size": "32"})
    AttentionReply.model_validate(r.json())
    bad = c.post("/attention", files=files, data={"threshold": "7"})
    assert bad.status_code == 422
    ErrorReply.model_validate(bad.json())
