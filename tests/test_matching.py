"""Facets, cosine similarity and best buddies against a hook on ``blocks[l].attn.qkv``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.model.facets import FACETS, block_facet, check_facet
from trainer.model.matching import best_buddies, check_query, query_similarity
from trainer.model.vit import DinoViT


def tiny_vit(reg_tokens: int = 0) -> DinoViT:
    torch.manual_seed(0)
    kwargs = {"init_values": 1.0, "interp_offset": 0.0} if reg_tokens else {}
    model = DinoViT(
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=2,
        img_size=32,
        reg_tokens=reg_tokens,
        **kwargs,
    )
    return model.eval()


def hooked_facet(model: DinoViT, x: torch.Tensor, layer: int, facet: str) -> torch.Tensor:
    """Reference: the full forward with a forward hook on block ``layer``'s qkv."""
    seen = {}
    handle = model.blocks[layer].attn.qkv.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("qkv", out.detach())
    )
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        handle.remove()
    qkv = seen["qkv"][0]
    dim = qkv.shape[-1] // 3
    part = {"query": 0, "key": 1, "value": 2}[facet]
    prefix = 1 + model.num_reg_tokens
    return qkv[prefix:, part * dim : (part + 1) * dim]


def loop_best_buddies(a: torch.Tensor, b: torch.Tensor) -> list[tuple[int, int, float]]:
    """Reference: mutual nearest neighbours by explicit loops over cosine similarities."""
    sims = [
        [float(F.cosine_similarity(a[i], b[j], dim=0)) for j in range(len(b))]
        for i in range(len(a))
    ]
    pairs = []
    for i, row in enumerate(sims):
        j = max(range(len(b)), key=row.__getitem__)
        back = max(range(len(a)), key=lambda t, j=j: sims[t][j])
        if back == i:
            pairs.append((i, j, row[j]))
    return sorted(pairs, key=lambda p: -p[2])


@pytest.mark.parametrize("reg_tokens", [0, 4])
@pytest.mark.parametrize("layer", [0, 2])
@pytest.mark.parametrize("facet", ["key", "query", "value"])
def test_facet_matches_qkv_hook(reg_tokens: int, layer: int, facet: str) -> None:
    model = tiny_vit(reg_tokens)
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        got = block_facet(model, x, layer, facet)[0]
    ref = hooked_facet(model, x, layer, facet)
    assert got.shape == (5 * 6, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_token_facet_is_block_output() -> None:
    model = tiny_vit(4)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        last = block_facet(model, x, -1, "token")[0]
        first = block_facet(model, x, 0, "token")[0]
        ref = model.forward_features(x)[0, 5:]
        ref0 = model.blocks[0](model.prepare_tokens(x))[0, 5:]
    torch.testing.assert_close(last, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first, ref0, atol=1e-5, rtol=1e-5)


def test_similarity_and_best_buddies_against_reference() -> None:
    model = tiny_vit()
    torch.manual_seed(1)
    xa, xb = torch.randn(1, 3, 40, 48), torch.randn(1, 3, 32, 40)
    with torch.no_grad():
        da, db = block_facet(model, xa, 1, "key")[0], block_facet(model, xb, 1, "key")[0]
    ra, rb = hooked_facet(model, xa, 1, "key"), hooked_facet(model, xb, 1, "key")
    sim = query_similarity(da, db, (2, 3), (5, 6), (4, 5))
    ref = F.cosine_similarity(ra[2 * 6 + 3][None], rb, dim=1).reshape(4, 5)
    torch.testing.assert_close(sim, ref, atol=1e-4, rtol=0)
    pairs = best_buddies(da, db, (5, 6), (4, 5), top_k=20)
    expected = loop_best_buddies(ra, rb)[:20]
    assert len(pairs) == len(expected) > 0
    for got, (i, j, s) in zip(pairs, expected, strict=True):
        assert got[:4] == [i // 6, i % 6, j // 5, j % 5]
        assert got[4] == pytest.approx(s, abs=1e-4)
    assert [p[4] for p in pairs] == sorted((p[4] for p in pairs), reverse=True)


def test_best_buddies_of_identical_images_are_the_identity() -> None:
    desc = torch.randn(12, 8)
    pairs = best_buddies(desc, desc, (3, 4), (3, 4), top_k=100)
    assert len(pairs) == 12
    assert all(p[:2] == p[2:4] for p in pairs)


def test_bad_inputs_name_the_allowed_values() -> None:
    with pytest.raises(ValueError, match="key, query, value, token"):
        check_facet("keys")
    with pytest.raises(ValueError, match="rows 0 to 2 and columns 0 to 3"):
        check_query((3, 0), (3, 4))
    with pytest.raises(ValueError, match="top_k"):
        best_buddies(torch.randn(4, 2), torch.randn(4, 2), (2, 2), (2, 2), top_k=0)
    with pytest.raises(ValueError, match="layer 3 is out of range"):
        block_facet(tiny_vit(), torch.randn(1, 3, 32, 32), 3)
    assert FACETS == ("key", "query", "value", "token")
