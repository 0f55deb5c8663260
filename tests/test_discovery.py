"""The service's matching and object-discovery engine on tiny ViTs (DINO and with registers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backend.analysis.discovery import discover_objects, match, patch_features, scale_box
from trainer.model.lost import lost
from trainer.model.tokencut import tokencut
from trainer.model.vit import DinoViT


def tiny_vit(reg_tokens: int) -> DinoViT:
    torch.manual_seed(0)
    kwargs = {"init_values": 1.0, "interp_offset": 0.0} if reg_tokens else {}
    return DinoViT(
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        img_size=32,
        reg_tokens=reg_tokens,
        **kwargs,
    ).eval()


def hook_keys(model: DinoViT, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = model.blocks[-1].attn.qkv.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("qkv", out.detach())
    )
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    return seen["qkv"][0, 1 + model.num_reg_tokens :, 32:64]


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_match_against_hooked_keys_and_runs_no_model(reg_tokens: int) -> None:
    model = tiny_vit(reg_tokens)
    xa, xb = torch.randn(1, 3, 40, 48), torch.randn(1, 3, 32, 40)
    fa, fb = patch_features(model, xa), patch_features(model, xb)
    assert fa.grid == (5, 6) and fb.grid == (4, 5)
    assert fa.nbytes() == 30 * 32 * 4
    ka, kb = hook_keys(model, xa), hook_keys(model, xb)

    def no_model(_x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("match ran the model")

    model.prepare_tokens = no_model  # cached features: new queries must not run the model
    for query in [(0, 0), (4, 5)]:
        result = match(fa, fb, query=query, top_k=5)
        ref = F.cosine_similarity(ka[query[0] * 6 + query[1]][None], kb, dim=1)
        np.testing.assert_allclose(np.array(result.similarity).ravel(), ref.numpy(), atol=1e-4)
        best = int(ref.argmax())
        assert result.best_match == (best // 5, best % 5)
    assert len(result.matches) <= 5 and result.grid_b == (4, 5)
    assert [m[4] for m in result.matches] == sorted((m[4] for m in result.matches), reverse=True)


def test_match_bad_query_and_facet() -> None:
    model = tiny_vit(0)
    fa = patch_features(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="outside A's 4x4 patch grid"):
        match(fa, fa, query=(4, 0))
    with pytest.raises(ValueError, match="unknown facet"):
        patch_features(model, torch.randn(1, 3, 32, 32), facet="keys")


def test_objects_box_in_uploaded_pixels_and_gt_iou() -> None:
    model = tiny_vit(4)
    x = torch.randn(1, 3, 48, 56)
    ref = lost(model, x)
    out = discover_objects(model, x, resized_size=(56, 48), original_size=(112, 96))
    assert out.boxes == [scale_box(ref.box, (56, 48), (112, 96))]
    assert out.seed == ref.seed and out.grid == (6, 7)
    assert np.array_equal(np.array(out.mask), ref.mask)
    x0, y0, x1, y1 = (int(v) for v in out.boxes[0])
    gt = np.zeros((96, 112), dtype=bool)
    gt[y0:y1, x0:x1] = True
    scored = discover_objects(model, x, (56, 48), (112, 96), gt_mask=gt)
    assert scored.box_iou == pytest.approx(1.0)
    assert discover_objects(model, x, (56, 48), (112, 96), gt_mask=~np.ones_like(gt)).box_iou == 0
    with pytest.raises(ValueError, match="must match the image's 112x96"):
        discover_objects(model, x, (56, 48), (112, 96), gt_mask=gt[:10])
    cut = discover_objects(model, x, (56, 48), (112, 96), method="tokencut")
    assert cut.method == "tokencut" and cut.seed == tokencut(model, x).seed
    with pytest.raises(ValueError, match="choose one of lost, tokencut"):
        discover_objects(model, x, (56, 48), (112, 96), method="found")


def test_scale_box() -> None:
    assert scale_box([8, 4, 16, 12], (32, 16), (64, 48)) == [16.0, 12.0, 32.0, 36.0]
