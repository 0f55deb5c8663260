"""Weighted k-NN (paper section 4.1) against hand-computed votes, feature extraction and the CLI."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_data import make_image_folder
from trainer.data.dataset import Batch
from trainer.eval.knn import extract_features, knn_classify, main
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import build_vit


def reference_votes(train, labels, query, k, T, num_classes):
    """Plain-Python weighted vote: the k most cosine-similar train points vote exp(sim / T).

    A class without any vote is never counted as a top-5 guess.
    """
    sims = [
        (sum(a * b for a, b in zip(query, t, strict=True)), int(c))
        for t, c in zip(train, labels, strict=True)
    ]
    sims.sort(key=lambda sc: -sc[0])
    votes = [0.0] * num_classes
    for s, c in sims[:k]:
        votes[c] += math.exp(s / T)
    return votes


def test_hand_sized_case():
    # unit vectors at angles 0, 10, 90, 100 and 180 degrees; classes 0, 0, 1, 1, 2
    angles = torch.tensor([0.0, 10.0, 90.0, 100.0, 180.0]) * math.pi / 180
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])
    q_angle = torch.tensor([60.0 * math.pi / 180])
    query = torch.stack([q_angle.cos(), q_angle.sin()], dim=1)
    # k=1: nearest is 90 deg (cos 30 = .866) vs 10 deg (cos 50 = .643) -> class 1
    assert knn_classify(train, labels, query, torch.tensor([1]), 1, 0.07, 3) == (100.0, 100.0)
    # k=4, T=0.07: class 1 gets exp(.866/.07)+exp(.5/.07) ~ 2.4e5 vs class 0
    # exp(.643/.07)+exp(.5/.07) ~ 1.1e4
    top1, _ = knn_classify(train, labels, query, torch.tensor([0]), 4, 0.07, 3)
    assert top1 == 0.0
    # with a huge temperature every neighbour weighs ~1, and class 0 and 1 tie at 2 votes; top-5
    # covers both
    _, top5 = knn_classify(train, labels, query, torch.tensor([0]), 4, 1e6, 3)
    assert top5 == 100.0


def test_matches_reference_on_random_features():
    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(40, 6, generator=g), dim=1)
    labels = torch.randint(0, 7, (40,), generator=g)
    test = F.normalize(torch.randn(25, 6, generator=g), dim=1)
    test_labels = torch.randint(0, 7, (25,), generator=g)
    for k, T in [(1, 0.07), (5, 0.07), (20, 0.5)]:
        ref1 = ref5 = 0
        for q, y in zip(test.tolist(), test_labels.tolist(), strict=True):
            votes = reference_votes(train.tolist(), labels.tolist(), q, k, T, 7)
            ranked = sorted(range(7), key=lambda c: -votes[c])
            ref1 += ranked[0] == y
            ref5 += y in ranked[:5] and votes[y] > 0
        top1, top5 = knn_classify(train, labels, test, test_labels, k, T, 7, chunk=7)
        assert top1 == pytest.approx(100 * ref1 / 25) and top5 == pytest.approx(100 * ref5 / 25)


def test_k_larger_than_the_bank_and_bad_k():
    train = F.normalize(torch.randn(3, 4), dim=1)
    top1, top5 = knn_classify(
        train, torch.tensor([0, 1, 1]), train, torch.tensor([0, 1, 1]), 200, 0.07, 2
    )
    assert 0.0 <= top1 <= 100.0 and top5 == 100.0
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(train, torch.tensor([0, 1, 1]), train, torch.tensor([0, 1, 1]), 0, 0.07, 2)


def test_extract_features_normalises_and_skips_empty_batches():
    model = nn.Linear(4, 3)
    batches = [
        Batch(torch.randn(2, 4), torch.tensor([1, 0]), 0),
        Batch([], torch.empty(0, dtype=torch.long), 2),
        Batch(torch.randn(1, 4), torch.tensor([2]), 0),
    ]
    feats, labels = extract_features(model, batches, "cpu")
    assert feats.shape == (3, 3) and labels.tolist() == [1, 0, 2]
    assert torch.allclose(feats.norm(dim=1), torch.ones(3), atol=1e-6)


def test_cli_on_an_exported_backbone(tmp_path, capsys):
    torch.set_num_threads(1)
    make_image_folder(tmp_path / "train", {"cat": 3, "dog": 3}, size=(12, 12))
    make_image_folder(tmp_path / "val", {"cat": 2, "dog": 2}, size=(12, 12), seed=1)
    model = build_vit(embed_dim=48, depth=2, num_heads=3, patch_size=4)
    export_backbone_safetensors(model, tmp_path / "b.safetensors", "vit_d48", epoch=1)
    results = main(
        [
            "--checkpoint",
            str(tmp_path / "b.safetensors"),
            "--train_data",
            str(tmp_path / "train"),
            "--val_data",
            str(tmp_path / "val"),
            "--resize",
            "8",
            "--crop",
            "8",
            "--nb_knn",
            "1",
            "3",
            "--device",
            "cpu",
            "--num_workers",
            "0",
            "--batch_size",
            "4",
        ]
    )
    assert set(results) == {"k1_top1", "k1_top5", "k3_top1", "k3_top5"}
    assert results["k3_top5"] == 100.0  # only 2 classes
    assert "1-NN classifier result" in capsys.readouterr().out


def test_the_knn_command_takes_a_precision():
    import pytest as _pytest

    from trainer.eval.knn import build_parser

    base = ["--checkpoint", "x.pth", "--train_data", "t", "--val_data", "v"]
    assert build_parser().parse_args(base).precision == "fp32"  # the paper's numbers by default
    assert build_parser().parse_args([*base, "--precision", "int8"]).precision == "int8"
    with _pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--precision", "fp16"])
