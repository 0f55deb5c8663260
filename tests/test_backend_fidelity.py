"""The service's attentions and masks equal the authors' visualize_attention.py procedure.

The reference below is written out from the paper / the authors' script: torchvision
Resize((s, s)) + ToTensor + Normalize, top-left crop to a patch multiple, explicit
attention in every block, their bicubic positional-embedding interpolation with the
``+ 0.1`` trick, and their mask procedure (sort, normalise, cumsum, > 1 - t, unsort).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torchvision import transforms

from backend.main import create_app
from tests.reference_vit import ref_square_input
from tests.service_helpers import drawn_scene, isolated_settings, png_bytes
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import IMAGENET_MEAN, IMAGENET_STD, build_vit

PATCH, DIM, DEPTH, HEADS = 8, 128, 2, 2


def _reference_pos_embed(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    n = pos.shape[1] - 1
    side = int(math.sqrt(n))
    if gh * gw == n and gh == gw:
        return pos
    patch_pos = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    h0, w0 = gh + 0.1, gw + 0.1
    patch_pos = F.interpolate(patch_pos, scale_factor=(h0 / side, w0 / side), mode="bicubic")
    assert patch_pos.shape[-2:] == (gh, gw)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
    return torch.cat([pos[:, :1], patch_pos], dim=1)


def _reference_last_attention(state: dict[str, torch.Tensor], img: torch.Tensor) -> torch.Tensor:
    """Explicit attention in every block; the last block's full (heads, 1+N, 1+N) weights."""
    x = F.conv2d(
        img, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=PATCH
    )
    _, d, gh, gw = x.shape
    x = torch.cat([state["cls_token"], x.flatten(2).transpose(1, 2)], dim=1)
    x = x + _reference_pos_embed(state["pos_embed"], gh, gw)
    n, hd = x.shape[1], d // HEADS
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), state[p + "norm1.weight"], state[p + "norm1.bias"], eps=1e-6)
        qkv = (h @ state[p + "attn.qkv.weight"].T + state[p + "attn.qkv.bias"]).reshape(
            1, n, 3, HEADS, hd
        )
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * hd**-0.5, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(1, n, d)
        x = x + y @ state[p + "attn.proj.weight"].T + state[p + "attn.proj.bias"]
        h = F.layer_norm(x, (d,), state[p + "norm2.weight"], state[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ state[p + "mlp.fc1.weight"].T + state[p + "mlp.fc1.bias"])
        x = x + h @ state[p + "mlp.fc2.weight"].T + state[p + "mlp.fc2.bias"]
    return attn[0]


def _reference_masks(attn: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' procedure; also the per-patch cumulative mass, to recognise ties."""
    val, idx = torch.sort(attn)
    val = val / torch.sum(val, dim=1, keepdim=True)
    cumval = torch.cumsum(val, dim=1)
    th_attn = cumval > (1 - threshold)
    idx2 = torch.argsort(idx)
    cum_unsorted = torch.gather(cumval, 1, idx2)
    return torch.gather(th_attn, 1, idx2), cum_unsorted


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(1)
    model = build_vit(patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
    with torch.no_grad():  # sharpen attention so masks are not a sea of ties
        for blk in model.blocks:
            blk.attn.qkv.weight.mul_(25.0)
        model.pos_embed.mul_(20.0)
    settings = isolated_settings(tmp_path_factory.mktemp("fid"), default_model="fid")
    export_backbone_safetensors(
        model, settings.checkpoint_dir / "fid.safetensors", arch="vit_d128", epoch=1
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with TestClient(create_app(settings)) as client:
        yield client, state


@pytest.mark.parametrize(
    ("size", "image_size", "threshold"),
    [((90, 70), 100, 0.6), ((64, 64), 56, 0.3), ((120, 80), 224, 0.9)],
)
def test_square_matches_authors_procedure(setup, size, image_size, threshold):
    client, state = setup
    scene = drawn_scene(*size)
    r = client.post(
        "/attention",
        files={"image": ("s.png", png_bytes(scene), "image/png")},
        data={
            "resize": "square",
            "image_size": str(image_size),
            "threshold": str(threshold),
            "overlays": "false",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    img = ref_square_input(scene, image_size, PATCH)
    rows, cols = img.shape[2:]
    gh, gw = rows // PATCH, cols // PATCH
    with torch.no_grad():
        ref = _reference_last_attention(state, img)[:, 0, 1:]
    assert body["grid"] == [gh, gw] and body["image_size"] == [rows, cols]
    got = torch.tensor(body["attentions"]).reshape(HEADS, -1)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5, rtol=0), (got - ref).abs().max()
    assert ref.max() > 5.0 / ref.shape[1], (
        "attention should be peaky for this test to mean something"
    )
    ref_masks, cum = _reference_masks(ref, threshold)
    masks = torch.tensor(body["masks"]).reshape(HEADS, -1).bool()
    differ = masks != ref_masks
    assert torch.all((cum[differ] - (1 - threshold)).abs() < 1e-4), "masks differ beyond ties"
    assert differ.sum() <= 2
    np.testing.assert_allclose(
        body["mean_attention"], got.mean(0).reshape(gh, gw).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(body["coverage"], masks.float().mean(1).numpy(), atol=1e-6)


def test_keep_aspect_rectangular_grid_matches_reference(setup):
    """keep_aspect: the authors' ``transforms.Resize(int)`` (short side, bilinear), non-square."""
    client, state = setup
    scene = drawn_scene(150, 100)
    r = client.post(
        "/attention",
        files={"image": ("s.png", png_bytes(scene), "image/png")},
        data={"image_size": "60", "overlays": "false"},
    )
    assert r.status_code == 200, r.text
    transform = transforms.Compose(
        [
            transforms.Resize(60),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    img = transform(scene)
    assert tuple(img.shape) == (3, 60, 90)
    img = img[None, :, :56, :88]
    with torch.no_grad():
        ref = _reference_last_attention(state, img)[:, 0, 1:]
    assert r.json()["grid"] == [7, 11]
    got = torch.tensor(r.json()["attentions"]).reshape(HEADS, -1)
    assert torch.allclose(got, ref, atol=1e-5, rtol=0)
