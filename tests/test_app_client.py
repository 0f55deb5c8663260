"""BackendClient: what it sends (docs/API.md); every failure becomes a readable BackendError."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from app.client import BackendClient, BackendError, backend_url_from_env

PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8"
    "ffff3f0005fe02fe0def46b80000000049454e44ae426082"
)


def _client(handler) -> BackendClient:
    return BackendClient("http://backend.test", transport=httpx.MockTransport(handler))


def _form_field(body: bytes, name: str) -> str:
    marker = f'name="{name}"\r\n\r\n'.encode()
    start = body.index(marker) + len(marker)
    return body[start : body.index(b"\r\n", start)].decode()


def test_attention_sends_multipart_fields_of_the_contract(tmp_path):
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["path"], seen["body"] = request.url.path, request.read()
        seen["type"] = request.headers["content-type"]
        return httpx.Response(
            200, json={"model": "m", "num_heads": 1, "attentions": [], "masks": [], "coverage": []}
        )

    image = tmp_path / "cat.png"
    image.write_bytes(PNG_1PX)
    with _client(handler) as client:
        client.attention(
            image,
            model="dino_vits16",
            image_size=96,
            resize="square",
            threshold=0.35,
            gt_mask=image,
        )
    body = seen["body"]
    assert seen["path"] == "/attention" and seen["type"].startswith("multipart/form-data")
    assert b'name="image"; filename="cat.png"' in body and b"Content-Type: image/png" in body
    assert b'name="gt_mask"; filename="cat.png"' in body
    assert _form_field(body, "model") == "dino_vits16"
    assert _form_field(body, "image_size") == "96"
    assert _form_field(body, "resize") == "square"
    assert float(_form_field(body, "threshold")) == 0.35
    assert _form_field(body, "overlays") == "true" and _form_field(body, "format") == "json"


def test_model_left_out_lets_the_service_choose_its_default():
    def handler(request: httpx.Request) -> httpx.Response:
        assert b'name="model"' not in request.read()
        assert _form_field(request.content, "format") == "npz"
        return httpx.Response(200, content=b"NPZ")

    with _client(handler) as client:
        assert client.attention_npz(PNG_1PX) == b"NPZ"


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (
            404,
            {"detail": "unknown model 'x'; choose one of a, b", "code": "unknown_model"},
            {},
            "Unknown model: unknown model 'x'; choose one of a, b",
        ),
        (
            415,
            {"detail": "not an image", "code": "unsupported_media_type"},
            {},
            "not an image the service can read",
        ),
        (413, {"detail": "upload is 30 MB; the limit is 20 MB"}, {}, "too large: upload is 30 MB"),
        (
            422,
            {
                "detail": [
                    {"loc": ["body", "threshold"], "msg": "Input should be less than or equal to 1"}
                ]
            },
            {},
            "out of range: threshold: Input should be less than or equal to 1",
        ),
        (
            503,
            {"detail": "busy", "code": "busy"},
            {"Retry-After": "3"},
            "not ready: busy (retry in 3 s)",
        ),
        (500, "Internal Server Error", {}, "HTTP 500: Internal Server Error"),
    ],
)
def test_http_errors_become_readable_messages(status, body, headers, expected):
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, dict):
            return httpx.Response(status, json=body, headers=headers)
        return httpx.Response(status, text=body, headers=headers)

    with _client(handler) as client, pytest.raises(BackendError) as err:
        client.attention(PNG_1PX)
    assert expected in str(err.value)
    assert err.value.status == status
    if isinstance(body, dict) and "code" in body:
        assert err.value.code == body["code"]


def test_unreachable_service_names_the_address_and_how_to_start_it():
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        BackendClient(f"http://127.0.0.1:{port}", connect_timeout=2) as client,
        pytest.raises(BackendError) as err,
    ):
        client.models()
    assert f"127.0.0.1:{port} is not reachable" in str(err.value) and "make run" in str(err.value)


def test_timeout_says_how_long_and_what_to_try():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with BackendClient("http://b", timeout=7, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(
            BackendError, match="did not answer within 7 s; try a smaller image size"
        ):
            client.attention(PNG_1PX)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (httpx.Response(200, text="<html>not the service</html>"), "not JSON"),
        (httpx.Response(200, json={"status": "ok"}), "lacks 'model'"),
    ],
)
def test_replies_that_are_not_the_service_are_reported(reply, expected):
    with _client(lambda request: reply) as client, pytest.raises(BackendError, match=expected):
        client.attention(PNG_1PX)


def test_models_reply_is_checked_and_returned():
    catalog = {"default": "a", "models": [{"id": "a", "trained": False}]}
    with _client(lambda request: httpx.Response(200, json=catalog)) as client:
        assert client.models() == catalog
    with _client(lambda request: httpx.Response(200, json={"default": "a"})) as client:
        with pytest.raises(BackendError, match="no 'models' list"):
            client.models()


def test_readyz_503_is_an_error_until_the_model_is_loaded():
    body = json.dumps({"detail": "default model is still loading", "code": "not_ready"})
    with _client(
        lambda r: httpx.Response(503, content=body, headers={"content-type": "application/json"})
    ) as client:
        with pytest.raises(BackendError, match="still loading"):
            client.ready()


def test_bad_local_inputs_are_reported_before_any_request(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    with _client(handler) as client:
        with pytest.raises(BackendError, match="choose one of keep_aspect, square"):
            client.attention(PNG_1PX, resize="stretch")
        with pytest.raises(BackendError, match="cannot read the file missing.png"):
            client.attention(tmp_path / "missing.png")


def test_backend_url_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BACKEND_URL", "http://backend:8000/")
    assert backend_url_from_env() == "http://backend:8000"
    assert BackendClient().base_url == "http://backend:8000"
    monkeypatch.delenv("BACKEND_URL")
    assert backend_url_from_env() == "http://127.0.0.1:8000"


def test_explorer_fields_are_sent_as_the_service_reads_them():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["body"] = request.read()
        return httpx.Response(
            200, json={"model": "m", "num_heads": 1, "attentions": [], "masks": [], "coverage": []}
        )

    with _client(handler) as client:
        client.attention(
            PNG_1PX,
            layer=-2,
            query=(3, 5),
            composite=True,
            heads=[0, 2],
            pca=False,
            overlay_format="jpeg",
        )
        body = seen["body"]
        assert _form_field(body, "layer") == "-2" and _form_field(body, "query") == "3,5"
        assert _form_field(body, "composite") == "true" and _form_field(body, "heads") == "0,2"
        assert _form_field(body, "pca") == "false" and _form_field(body, "overlay_format") == "jpeg"
        client.attention(PNG_1PX, query=None, heads=None)
        assert b'name="query"' not in seen["body"] and b'name="heads"' not in seen["body"]
        with pytest.raises(
            BackendError, match="unknown parameter 'layers'; choose from layer, query"
        ):
            client.attention(PNG_1PX, layers=3)
