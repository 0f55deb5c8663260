"""``/docs`` (Swagger UI) and ``/redoc`` load every asset from the service itself: no CDN, no web
fonts, so both work offline."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from tests.service_helpers import isolated_settings, write_tiny_checkpoint


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = isolated_settings(tmp_path_factory.mktemp("docs"))
    write_tiny_checkpoint(settings.checkpoint_dir)
    with TestClient(create_app(settings)) as c:
        yield c


def _references(html: str) -> list[str]:
    """Every URL the page loads: src= and href= attributes, and url: '...' in its script."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"""url\s*:\s*['"]([^'"]+)['"]""", html)
    found += re.findall(r"""spec-url\s*=\s*["']([^"']+)["']""", html)
    return found


@pytest.mark.parametrize(
    ("page", "kinds"),
    [("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))],
)
def test_the_page_and_every_asset_come_from_the_service(client, page, kinds):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "://" not in html.replace("http://www.w3.org", ""), "an absolute URL: a CDN?"
    refs = _references(html)
    assert all(any(ref.endswith(k) for ref in refs) for k in kinds), refs
    assert "/openapi.json" in refs
    for ref in refs:
        asset = client.get(ref)
        assert asset.status_code == 200 and len(asset.content) > 100, ref
    js = next(ref for ref in refs if ref.endswith(".js"))
    assert len(client.get(js).content) > 500_000  # the real bundle, not a stub
    assert client.get("/openapi.json").json()["info"]["title"] == "DINO attention service"


def test_the_asset_folder_is_not_in_the_api_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
