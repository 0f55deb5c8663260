"""Every bad input, good image modes and 16 concurrent clients against a real uvicorn."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service_helpers import (
    bad_input_cases,
    image_bytes,
    uvicorn_process,
    write_tiny_checkpoint,
)

pytestmark = pytest.mark.slow
MAX_UPLOAD = int(0.2 * 2**20)
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proc")
    ckpt, cache = tmp / "checkpoints", tmp / "cache"
    ckpt.mkdir()
    write_tiny_checkpoint(ckpt, "tiny")
    env = {
        "DINO_CHECKPOINT_DIR": str(ckpt),
        "DINO_CACHE_DIR": str(cache),
        "DINO_ALLOW_DOWNLOADS": "false",
        "DINO_DEVICE": "cpu",
        "DINO_MAX_UPLOAD_MB": "0.2",
        "DINO_MAX_PIXELS": str(MAX_PIXELS),
        "DINO_MAX_IMAGE_SIZE": "1024",
        "DINO_MAX_REQUEST_MB": "8",
        "DINO_QUEUE_TIMEOUT_S": "60",
    }
    with uvicorn_process(env) as url:
        yield url


def _enc(img, fmt="PNG", **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_every_bad_input_is_a_readable_4xx(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        assert client.get("/readyz").json() == {"ready": True, "default_model": "tiny"}
        for name, kwargs, status in bad_input_cases(MAX_UPLOAD, MAX_PIXELS):
            r = client.post("/attention", **kwargs)
            assert r.status_code == status, (name, r.text)
            body = r.json()
            assert body["code"] and len(body["detail"]) > 10 and "Traceback" not in r.text, name
        r = client.post(
            "/attention/batch",
            files=[("images", (f"{i}", image_bytes(16, 16), "image/png")) for i in range(17)],
        )
        assert r.status_code == 422 and "1 to 16" in r.json()["detail"]
        r = client.post(
            "/attention", content=b"x" * (9 * 2**20), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["code"] == "request_too_large"


def test_image_modes_are_handled(base_url):
    exif = Image.Exif()
    exif[0x0112] = 6
    gif = io.BytesIO()
    frames = [Image.new("RGB", (24, 16), c) for c in ("red", "green")]
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    cases = {
        "cmyk": _enc(Image.new("CMYK", (24, 16), (0, 200, 0, 0)), "JPEG"),
        "16bit": _enc(Image.fromarray(np.full((16, 24), 40000, np.uint16))),
        "palette": _enc(Image.new("P", (24, 16), 3)),
        "alpha": _enc(Image.new("RGBA", (24, 16), (0, 0, 0, 0))),
        "gif": gif.getvalue(),
        "exif": _enc(Image.new("RGB", (24, 16)), "JPEG", exif=exif.tobytes()),
    }
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for name, data in cases.items():
            r = client.post(
                "/attention",
                files={"image": ("x", data, "application/octet-stream")},
                data={"image_size": "16", "overlays": "false"},
            )
            assert r.status_code == 200, (name, r.text)
            expected = [16, 24] if name != "exif" else [24, 16]  # EXIF 6 turns 24x16 into 16x24
            assert r.json()["image_size"] == expected, name


def test_sixteen_concurrent_clients(base_url):
    def one(i):
        with httpx.Client(base_url=base_url, timeout=120) as client:
            return client.post(
                "/attention",
                files={"image": ("a.png", image_bytes(48, 40, seed=i), "image/png")},
                data={"image_size": "64"},
            ).status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(16))) == [200] * 16
    metrics = httpx.get(f"{base_url}/metrics").text
    assert 'status="200"' in metrics and "dino_request_latency_seconds_bucket" in metrics
