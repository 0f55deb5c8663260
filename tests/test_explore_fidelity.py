"""``layer``, ``query`` and ``pca`` of POST /attention against an explicit reference ViT.

The reference (tests/reference_vit.py) runs every block with explicit softmax(QK^T / sqrt(d)) V
from the plain state dict; the images are preprocessed as the authors' visualize_attention.py
does (torchvision Resize((s, s)), ToTensor, Normalize, top-left crop to a patch multiple).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from backend.main import create_app
from tests.reference_vit import ref_block_readout, ref_square_input
from tests.service_helpers import drawn_scene, isolated_settings, png_bytes
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import build_vit

DEPTH = 3
MODELS = {"p8": (8, 64, 2), "p16": (16, 64, 4)}  # patch, width, heads


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    settings = isolated_settings(tmp_path_factory.mktemp("explore_fid"), default_model="p8")
    states = {}
    for i, (name, (patch, dim, heads)) in enumerate(MODELS.items()):
        torch.manual_seed(10 + i)
        model = build_vit(patch_size=patch, embed_dim=dim, depth=DEPTH, num_heads=heads)
        with torch.no_grad():  # peaky attention, so that a wrong row or block cannot pass
            for blk in model.blocks:
                blk.attn.qkv.weight.mul_(6.0)
            model.pos_embed.mul_(10.0)
        export_backbone_safetensors(
            model, settings.checkpoint_dir / f"{name}.safetensors", arch="vit_d64", epoch=1
        )
        states[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with TestClient(create_app(settings)) as client:
        yield client, states


CASES = [
    ("p8", (90, 60), 72, 0, [(0, 0), (4, 7)]),
    ("p8", (50, 80), 64, 1, [(7, 0), (3, 5)]),
    ("p8", (70, 70), 56, -1, [(6, 6)]),
    ("p16", (120, 80), 96, 0, [(5, 5), (2, 3)]),
    ("p16", (64, 100), 112, -2, [(0, 6)]),
    ("p16", (90, 90), 80, 2, [(4, 1)]),
]


@pytest.mark.parametrize(("model", "size", "image_size", "layer", "queries"), CASES)
def test_layer_and_query_maps_equal_the_explicit_reference(
    setup, model, size, image_size, layer, queries
):
    client, states = setup
    patch, _, heads = MODELS[model]
    scene = drawn_scene(*size)
    with torch.no_grad():
        ref_attn, _ = ref_block_readout(
            states[model], ref_square_input(scene, image_size, patch), heads, layer
        )
    ref_attn = ref_attn[0]  # heads, 1+N, 1+N
    gh = gw = image_size // patch
    for row, col in queries:
        r = client.post(
            "/attention",
            files={"image": ("s.png", png_bytes(scene), "image/png")},
            data={
                "model": model,
                "resize": "square",
                "image_size": str(image_size),
                "layer": str(layer),
                "query": f"{row},{col}",
                "overlays": "false",
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (
            body["grid"] == [gh, gw]
            and body["layer"] == layer % DEPTH
            and body["query"] == [row, col]
        )
        cls = torch.tensor(body["attentions"]).reshape(heads, -1)
        torch.testing.assert_close(cls, ref_attn[:, 0, 1:], atol=1e-5, rtol=0)
        query = torch.tensor(body["query_attentions"]).reshape(heads, -1)
        torch.testing.assert_close(query, ref_attn[:, 1 + row * gw + col, 1:], atol=1e-5, rtol=0)
        np.testing.assert_allclose(
            body["query_mean"], query.mean(0).reshape(gh, gw).numpy(), atol=1e-6
        )
    other = ref_attn[:, 1 + ((queries[0][0] + 1) % gh) * gw + queries[0][1], 1:]
    assert (other - ref_attn[:, 1 + queries[0][0] * gw + queries[0][1], 1:]).abs().max() > 1e-3


def test_blocks_differ_so_the_layer_parity_means_something(setup):
    _, states = setup
    x = ref_square_input(drawn_scene(64, 64), 64, 8)
    with torch.no_grad():
        rows = [
            ref_block_readout(states["p8"], x, 2, layer)[0][0, :, 0, 1:] for layer in range(DEPTH)
        ]
    assert min((rows[i] - rows[j]).abs().max() for i in range(DEPTH) for j in range(i)) > 1e-3
    assert max(r.max() for r in rows) > 5.0 / rows[0].shape[-1]  # peaky, not uniform


def _reference_pca(tokens: np.ndarray) -> np.ndarray:
    """First three principal components by SVD of the centred tokens, each min-max scaled."""
    x = tokens.astype(np.float64) - tokens.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[:3].T
    return (proj - proj.min(0)) / (proj.max(0) - proj.min(0))


@pytest.mark.parametrize("layer", [1, -1])  # -1: the last block's tokens after the final norm
def test_pca_is_the_first_three_components_of_the_block_tokens(setup, layer):
    client, states = setup
    scene = drawn_scene(100, 70)
    r = client.post(
        "/attention",
        files={"image": ("s.png", png_bytes(scene), "image/png")},
        data={
            "model": "p8",
            "resize": "square",
            "image_size": "64",
            "layer": str(layer),
            "pca": "true",
            "overlays": "true",
            "overlay_format": "png",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    rgb, fg = np.asarray(body["pca_rgb"]), np.asarray(body["pca_fg"])
    assert rgb.shape == (8, 8, 3) and fg.shape == (8, 8)
    assert rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_allclose(rgb.reshape(-1, 3).min(0), 0, atol=1e-6)
    np.testing.assert_allclose(rgb.reshape(-1, 3).max(0), 1, atol=1e-6)
    with torch.no_grad():
        _, tokens = ref_block_readout(states["p8"], ref_square_input(scene, 64, 8), 2, layer)
    ref = _reference_pca(tokens[0, 1:].numpy())
    for c in range(3):  # a principal axis has no sign: either orientation is the same picture
        got = rgb.reshape(-1, 3)[:, c]
        err = min(np.abs(got - ref[:, c]).max(), np.abs(got - (1 - ref[:, c])).max())
        assert err < 1e-3, (c, err)
    assert (
        set(np.unique(fg)) <= {0, 1} and 0 < fg.sum() <= fg.size / 2
    )  # foreground: the smaller side
    first = rgb[..., 0].reshape(-1)
    split = first[fg.reshape(-1) == 1].min()  # component 1 > 0 <=> foreground: one side of a cut
    assert np.all(first[fg.reshape(-1) == 0] < split)
    pic = Image.open(io.BytesIO(base64.b64decode(body["overlays"]["pca"])))
    assert pic.size == (64, 64) and "pca_fg" in body["overlays"]
    np.testing.assert_allclose(np.asarray(pic)[3, 11] / 255.0, rgb[0, 1], atol=1 / 255 + 1e-6)


def test_block_attention_runs_only_the_blocks_up_to_layer_and_equals_the_reference():
    from trainer.model.block_attention import block_attention

    torch.manual_seed(3)
    model = build_vit(patch_size=8, embed_dim=64, depth=4, num_heads=2).eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    calls = []
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda *_, i=i: calls.append(i))
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        for layer in range(4):
            calls.clear()
            full = block_attention(model, x, layer, None).attention  # every query row
            assert calls == list(
                range(layer)
            )  # later blocks are not run; block `layer` only its Q/K
            ref, _ = ref_block_readout(state, x, 2, layer)
            torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)
            cls = model.get_cls_attention(x, layer=layer)
            torch.testing.assert_close(cls, ref[:, :, 0, 1:].reshape(1, 2, 5, 7), atol=1e-5, rtol=0)
        assert model.blocks[0].attn.fused_attn  # the blocks before run timm's fused SDPA
        torch.testing.assert_close(model.get_last_selfattention(x), ref, atol=1e-5, rtol=0)
