"""The frozen-backbone runner: k-NN and Jaccard unchanged on it, sharding, gathering, torchrun."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_eval_seg import StubModel, gt_image, make_dataset
from trainer.eval import knn, seg
from trainer.eval.backbone import as_backbone
from trainer.eval.runner import collect_dataset, frozen_network
from trainer.eval.shards import StridedSampler, gather_in_order, shard_ranges
from trainer.model.vit import build_vit

REPO = Path(__file__).resolve().parents[1]


def tiny_vit():
    torch.manual_seed(0)
    return build_vit(embed_dim=48, depth=2, num_heads=3, patch_size=8).eval()


def image_folder(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (30, 26, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.jpg")


def ref_knn(train: Path, val: Path, model, k: int, temp: float) -> tuple[float, float]:
    """Top-1 / top-5 of the weighted vote, image by image and neighbour by neighbour."""
    view = knn.eval_transform(40, 32)

    def feats(root: Path):
        out = []
        for label, cls in enumerate(sorted(p.name for p in root.iterdir())):
            for f in sorted((root / cls).iterdir()):
                with torch.no_grad():
                    v = model(view(Image.open(f).convert("RGB"))[None])[0]
                out.append((v / v.norm(), label))
        return out

    bank, tests = feats(train), feats(val)
    top1 = top5 = 0
    for v, label in tests:
        sims = sorted(((float(v @ b), lab) for b, lab in bank), reverse=True)[:k]
        votes: dict[int, float] = {}
        for s, lab in sims:
            votes[lab] = votes.get(lab, 0.0) + math.exp(s / temp)
        ranked = sorted(votes, key=votes.get, reverse=True)
        top1 += ranked[0] == label
        top5 += label in ranked[:5]
    return 100.0 * top1 / len(tests), 100.0 * top5 / len(tests)


def test_knn_on_the_runner_equals_an_explicit_computation(tmp_path):
    torch.set_num_threads(1)
    image_folder(tmp_path / "train", {"a": 3, "b": 3, "c": 2})
    image_folder(tmp_path / "val", {"a": 2, "b": 2, "c": 2}, seed=1)
    model = tiny_vit()
    res = knn.knn_evaluate(
        model, tmp_path / "train", tmp_path / "val", "cpu", (3,), 0.07, 40, 32, 4, 0
    )
    top1, top5 = ref_knn(tmp_path / "train", tmp_path / "val", model, 3, 0.07)
    assert res["k3_top1"] == pytest.approx(top1) and res["k3_top5"] == pytest.approx(top5)


def test_jaccard_on_the_runner_equals_the_per_image_path(tmp_path):
    images, masks = make_dataset(tmp_path, {"a": "left", "b": "patch", "c": "right"})
    res = seg.evaluate_folder(StubModel(), images, masks, image_size=64)
    one_by_one = torch.stack(
        [
            seg.image_head_ious(StubModel(), Image.open(images / f"{s}.jpg"), gt_image(k), 64)
            for s, k in (("a", "left"), ("b", "patch"), ("c", "right"))
        ]
    )
    assert res["jaccard"] == pytest.approx(100 * float(one_by_one.max(1).values.mean()), abs=1e-9)
    model = tiny_vit()
    res = seg.evaluate_folder(model, images, masks, image_size=48)
    ref = [
        seg.image_head_ious(model, Image.open(images / f"{s}.jpg"), gt_image(k), 48)
        for s, k in (("a", "left"), ("b", "patch"), ("c", "right"))
    ]
    assert res["per_head_jaccard"] == [100 * float(v) for v in torch.stack(ref).mean(0)]


def test_a_dino_vit_is_its_own_evaluation_backbone():
    model = tiny_vit()
    assert as_backbone(model) is model  # DINO and DINOv2: nothing wrapped, results unchanged


def test_strided_shares_cover_every_index_once_and_gather_restores_order():
    shares = [list(StridedSampler(11, r, 3)) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(11)) and len(StridedSampler(11, 2, 3)) == 3
    rows = torch.arange(6.0)[:, None] * 10
    out, idx = gather_in_order(rows[[4, 0, 2]], torch.tensor([4, 0, 2]))
    assert idx.tolist() == [0, 2, 4] and out[:, 0].tolist() == [0.0, 20.0, 40.0]
    assert shard_ranges(7, 3, 1, 2) == [(1, range(3, 6))]
    assert [k for k, _ in shard_ranges(7, 3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="rank 3 is outside"):
        StridedSampler(4, 3, 2)


def test_collect_dataset_drops_unreadable_items_and_keeps_order():
    data = [(torch.full((2,), float(i)), 0) if i % 3 else None for i in range(7)]
    out, idx = collect_dataset(torch.nn.Identity(), data, lambda m, x: m(x), torch.device("cpu"))
    assert idx.tolist() == [1, 2, 4, 5] and out[:, 0].tolist() == [1.0, 2.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="no readable images"):
        collect_dataset(torch.nn.Identity(), [None], lambda m, x: m(x), torch.device("cpu"))


def test_frozen_network_refuses_an_emulated_mode(monkeypatch):
    import trainer.model.inference_precision as ip

    monkeypatch.setattr(ip, "cpu_flags", lambda: frozenset())
    with pytest.raises(SystemExit, match="--precision: precision int8 does not run natively"):
        frozen_network(tiny_vit(), "int8", torch.device("cpu"))
    net, mode = frozen_network(tiny_vit(), "auto", torch.device("cpu"))
    assert mode == "fp32"


FEATURES_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from trainer.eval import knn
    from trainer.eval.shards import join_launcher_group, leave_group
    from trainer.data.images import scan_image_folder
    from trainer.model.vit import build_vit
    rank, world, device = join_launcher_group("cpu")
    torch.manual_seed(0)
    model = build_vit(embed_dim=48, depth=2, num_heads=3, patch_size=8).eval()
    samples, _ = scan_image_folder(sys.argv[1])
    feats, labels = knn.dataset_features(
        model, samples, knn.eval_transform(40, 32), device, batch_size=2, num_workers=0,
        distributed=True)
    if rank == 0:
        torch.save({"feats": feats, "labels": labels, "world": world}, sys.argv[2])
    leave_group()
    """
)


def run_torchrun(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node=N`` on CPU (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_torchrun_two_processes_give_the_single_process_knn_features(tmp_path):
    image_folder(tmp_path / "data", {"a": 4, "b": 3})
    (tmp_path / "data" / "b" / "broken.jpg").write_bytes(b"not a jpeg")  # dropped on one rank
    script = tmp_path / "features.py"
    script.write_text(FEATURES_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    single = [sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "1.pt")]
    proc = subprocess.run(single, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_torchrun([str(script), str(tmp_path / "data"), str(tmp_path / "2.pt")], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = torch.load(tmp_path / "1.pt"), torch.load(tmp_path / "2.pt")
    assert (one["world"], two["world"]) == (1, 2)
    assert one["labels"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert torch.equal(one["labels"], two["labels"]) and torch.equal(one["feats"], two["feats"])
    assert one["feats"].shape == (7, 48)
