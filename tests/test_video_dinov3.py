"""Video jobs with DINOv3 and DINOv2 models: every frame's maps are those of POST /attention.

Tiny random models in the authors' layouts (tests/dinov3_layouts.py, tests/dinov2_layouts.py)
run a whole job on a generated clip. Each sampled frame, decoded here independently, is sent to
``POST /attention`` with the same parameters: the maps agree within 1e-5 and the masks are
equal. One frame is also checked against an explicit computation (timm's Eva with fused
attention off for DINOv3, the authors' DINOv2 forward written out in the tests): the CLS row
over the patch tokens, storage / register tokens left out.
"""

from __future__ import annotations

import io
import json
import time

import av
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from backend.main import create_app
from tests import dinov2_layouts, dinov3_layouts
from tests.service_helpers import isolated_settings
from tests.video_clips import write_clip
from trainer.model.dinov3 import build_dinov3
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD

FRAMES, W, H, FPS = 7, 72, 56, 10
V3_ID, V2_ID = "dinov3_vits16_pretrain_lvd1689m-video", "v2_reg_video"
HEADS, V3_SEED, V2_SEED = 2, 31, 32
SIZES = {V3_ID: (64, 16, 5), V2_ID: (56, 14, 1 + 4)}  # image size, patch, prefix tokens


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("v3clip") / "clip.mp4"
    write_clip(path, FRAMES, W, H, FPS)
    return path.read_bytes()


@pytest.fixture(scope="module")
def v2_weights() -> dict[str, torch.Tensor]:
    return dinov2_layouts.authors_state(128, 2, 4, seed=V2_SEED)


@pytest.fixture(scope="module")
def client(tmp_path_factory, v2_weights):
    settings = isolated_settings(tmp_path_factory.mktemp("v3video"), video_batch=3)
    arch = dinov3_layouts.tiny_arch()
    torch.save(
        dinov3_layouts.authors_state(arch, seed=V3_SEED), settings.checkpoint_dir / f"{V3_ID}.pth"
    )
    torch.save(v2_weights, settings.checkpoint_dir / f"{V2_ID}.pth")
    with TestClient(create_app(settings)) as c:
        yield c


def _run_job(client, clip: bytes, model: str, **fields: str) -> str:
    r = client.post(
        "/attention/video",
        files={"video": ("clip.mp4", clip, "video/mp4")},
        data={"model": model, "image_size": str(SIZES[model][0]), **fields},
    )
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    deadline = time.monotonic() + 120
    while (status := client.get(f"/jobs/{job}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    assert status["state"] == "done", status
    assert status["frames_done"] == FRAMES
    return job


def _npz(client, job: str) -> dict[str, np.ndarray]:
    r = client.get(f"/jobs/{job}/result", params={"format": "npz"})
    assert r.status_code == 200, r.text
    return dict(np.load(io.BytesIO(r.content)))


def _frames(clip: bytes) -> list[Image.Image]:
    with av.open(io.BytesIO(clip)) as container:
        return [frame.to_image() for frame in container.decode(video=0)]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image_maps(client, model: str, image: Image.Image, **fields: str) -> dict[str, np.ndarray]:
    r = client.post(
        "/attention",
        files={"image": ("f.png", _png(image), "image/png")},
        data={
            "model": model,
            "image_size": str(SIZES[model][0]),
            "format": "npz",
            "overlays": "false",
            **fields,
        },
    )
    assert r.status_code == 200, r.text
    return dict(np.load(io.BytesIO(r.content)))


def _square_tensor(image: Image.Image, side: int) -> torch.Tensor:
    """The service's resize=square preprocessing, written out (bilinear, ImageNet mean/std)."""
    img = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    arr = (np.asarray(img, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32)).unsqueeze(0)


def _v3_reference(x: torch.Tensor) -> torch.Tensor:
    """Last block's softmax rows ``(heads, T, T)`` from timm's Eva, fused attention off."""
    arch = dinov3_layouts.tiny_arch()
    model = build_dinov3(arch).eval()
    model.load_state_dict(dinov3_layouts.timm_state(arch, seed=V3_SEED))
    seen: dict[str, torch.Tensor] = {}
    for blk in model.blocks:
        blk.attn.fused_attn = False
    model.blocks[-1].attn.attn_drop.register_forward_hook(
        lambda _m, _i, out: seen.setdefault("a", out)
    )
    with torch.no_grad():
        model.forward_features(x)
    return seen["a"][0]


@pytest.mark.parametrize("model", [V3_ID, V2_ID])
@pytest.mark.parametrize("resize", ["keep_aspect", "square"])
def test_every_frame_equals_the_image_endpoint(client, clip, model, resize):
    side, patch, _ = SIZES[model]
    arrays = _npz(client, _run_job(client, clip, model, resize=resize, threshold="0.6"))
    meta = json.loads(str(arrays["meta"]))
    assert meta["model"] == model and meta["patch_size"] == patch
    assert arrays["attentions"].shape[:2] == (FRAMES, HEADS)
    for i, frame in enumerate(_frames(clip)):
        single = _image_maps(client, model, frame, resize=resize, threshold="0.6")
        assert single["attentions"].shape == arrays["attentions"][i].shape
        np.testing.assert_allclose(arrays["attentions"][i], single["attentions"], rtol=0, atol=1e-5)
        assert np.array_equal(arrays["masks"][i], single["masks"]), i
    if resize == "square":
        assert list(arrays["attentions"].shape[2:]) == [side // patch] * 2 == meta["grid"]


@pytest.mark.parametrize("model", [V3_ID, V2_ID])
def test_a_frame_equals_the_explicit_cls_row(client, clip, v2_weights, model):
    side, patch, prefix = SIZES[model]
    arrays = _npz(client, _run_job(client, clip, model, resize="square"))
    frame = _frames(clip)[3]
    x = _square_tensor(frame, side)
    if model == V3_ID:
        rows = _v3_reference(x)
    else:
        rows = dinov2_layouts.ref_attention(v2_weights, x, HEADS)[0]
    expected = rows[:, 0, prefix:].reshape(HEADS, side // patch, side // patch).numpy()
    np.testing.assert_allclose(arrays["attentions"][3], expected, rtol=0, atol=1e-5)
    cls_mass = 1.0 - rows[:, 0, 0].numpy()  # the maps hold less: storage tokens are left out
    assert np.all(arrays["attentions"][3].sum((1, 2)) < cls_mass + 1e-6)
