"""LOST's seed, seed set and box: a hand-built affinity, and a random ViT against loops."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch

from trainer.model.lost import key_affinity, lost, lost_from_affinity, patch_degrees
from trainer.model.tokencut import tokencut, tokencut_from_keys
from trainer.model.vit import DinoViT

OBJECT = [(1, 1), (1, 2), (2, 1), (2, 2)]


def hand_keys(extra: tuple[int, int] | None = None) -> torch.Tensor:
    """4x4 grid: object patches ``[1, -0.5]``, background ``[0, 1]``.

    Object/object affinity 1.25, object/background -0.5, background/background 1.
    """
    keys = torch.tensor([[0.0, 1.0]]).repeat(16, 1)
    for r, c in OBJECT + ([extra] if extra else []):
        keys[r * 4 + c] = torch.tensor([1.0, -0.5])
    return keys


def test_hand_built_affinity_gives_the_object() -> None:
    affinity = key_affinity(hand_keys())
    assert patch_degrees(affinity)[5].item() == 3  # the other three object patches
    assert patch_degrees(affinity)[0].item() == 11
    result = lost_from_affinity(affinity, (4, 4), k_patches=100, patch_size=16)
    assert result.seed == (1, 1)
    assert result.seed_set == [5, 6, 9, 10]
    assert result.patch_box == [1, 1, 3, 3]
    assert result.box == [16.0, 16.0, 48.0, 48.0]
    assert result.mask.sum() == 4
    assert result.scores[1, 1].item() == pytest.approx(5.0)
    assert result.scores[0, 0].item() == pytest.approx(-2.0)


def test_diagonal_neighbour_is_another_component_and_k_patches_limits_the_set() -> None:
    affinity = key_affinity(hand_keys(extra=(3, 3)))
    result = lost_from_affinity(affinity, (4, 4), k_patches=100)
    assert result.seed_set == [5, 6, 9, 10, 15]
    assert result.patch_box == [1, 1, 3, 3]  # (3, 3) only touches (2, 2) diagonally
    limited = lost_from_affinity(affinity, (4, 4), k_patches=2)
    assert limited.seed_set == [5, 6]


def test_box_is_clipped_to_the_image() -> None:
    result = lost_from_affinity(key_affinity(hand_keys()), (4, 4), patch_size=16, image_hw=(40, 44))
    assert result.box == [16.0, 16.0, 44.0, 40.0]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k_patches"):
        lost_from_affinity(key_affinity(hand_keys()), (4, 4), k_patches=0)
    with pytest.raises(ValueError, match="does not match"):
        lost_from_affinity(key_affinity(hand_keys()), (3, 4))


def loop_lost(keys: list[list[float]], gh: int, gw: int, k_patches: int) -> tuple:
    """Reference LOST from the paper's equations, with explicit loops."""
    n = len(keys)
    aff = [
        [sum(a * b for a, b in zip(keys[i], keys[j], strict=True)) for j in range(n)]
        for i in range(n)
    ]
    degree = [sum(1 for j in range(n) if j != i and aff[i][j] > 0) for i in range(n)]
    order = sorted(range(n), key=lambda i: (degree[i], i))
    seed = order[0]
    seed_set = [p for p in order[:k_patches] if aff[seed][p] > 0]
    scores = [sum(aff[s][j] for s in seed_set) for j in range(n)]
    seen, queue = {seed}, deque([seed])
    while queue:
        p = queue.popleft()
        r, c = divmod(p, gw)
        for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            q = rr * gw + cc
            if 0 <= rr < gh and 0 <= cc < gw and q not in seen and scores[q] > 0:
                seen.add(q)
                queue.append(q)
    rows = [p // gw for p in seen]
    cols = [p % gw for p in seen]
    return divmod(seed, gw), seed_set, [min(cols), min(rows), max(cols) + 1, max(rows) + 1]


@pytest.mark.parametrize("k_patches", [100, 7])
def test_random_vit_against_loop_reference(k_patches: int) -> None:
    torch.manual_seed(3)
    model = DinoViT(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32).eval()
    x = torch.randn(1, 3, 48, 56)
    captured = {}
    handle = model.blocks[-1].attn.qkv.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("qkv", out.detach())
    )
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    keys = captured["qkv"][0, 1:, 32:64].double().tolist()
    seed, seed_set, patch_box = loop_lost(keys, 6, 7, k_patches)
    result = lost(model, x, k_patches)
    assert result.seed == seed
    assert result.seed_set == seed_set
    assert result.patch_box == patch_box
    assert result.box == [float(v * 8) for v in patch_box]


def test_tokencut_splits_a_hand_built_two_cluster_graph() -> None:
    torch.manual_seed(5)
    keys = torch.tensor([[0.0, 1.0]]).repeat(16, 1) + 0.01 * torch.randn(16, 2)
    for r, c in OBJECT:
        keys[r * 4 + c] = torch.tensor([1.0, -0.1])
    result = tokencut_from_keys(keys, (4, 4), patch_size=8)
    assert result.seed in OBJECT
    assert result.patch_box == [1, 1, 3, 3]
    assert result.box == [8.0, 8.0, 24.0, 24.0]
    assert result.mask.sum() == 4


def test_tokencut_on_a_random_vit_against_scipy_generalised_eigh() -> None:
    torch.manual_seed(4)
    model = DinoViT(patch_size=8, embed_dim=32, depth=2, num_heads=2, img_size=32).eval()
    x = torch.randn(1, 3, 48, 56)
    captured = {}
    handle = model.blocks[-1].attn.qkv.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("qkv", out.detach())
    )
    with torch.no_grad():
        model.forward_features(x)
    handle.remove()
    k = captured["qkv"][0, 1:, 32:64].double().numpy()
    f = k / np.linalg.norm(k, axis=1, keepdims=True)
    w = f @ f.T
    w = np.where(w > 0.2, 1.0, 1e-5)
    d = np.diag(w.sum(axis=1))
    _, vecs = scipy.linalg.eigh(d - w, d, subset_by_index=[1, 1])
    vec = vecs[:, 0]
    seed = int(np.abs(vec).argmax())
    fg = vec > vec.mean()
    if not fg[seed]:
        fg = ~fg
    labels, _ = scipy.ndimage.label(fg.reshape(6, 7))
    rows, cols = np.nonzero(labels == labels[divmod(seed, 7)])
    result = tokencut(model, x)
    assert result.seed == divmod(seed, 7)
    assert np.array_equal(result.mask, labels == labels[divmod(seed, 7)])
    assert result.patch_box == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
