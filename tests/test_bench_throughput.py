"""benchmarks.train_throughput, tiny CPU config: both paths run the real step, sane figures."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from trainer.data.dataset import collate_skip_none
from trainer.data.jpeg_batch import collate_bytes
from trainer.train import engine
from trainer.train.flops import dino_step_flops_per_image

TINY = [
    "--arch",
    "vit_tiny",
    "--patch_size",
    "8",
    "--global_crops_size",
    "32",
    "--local_crops_size",
    "16",
    "--local_crops_number",
    "2",
    "--batch_size_per_gpu",
    "4",
    "--out_dim",
    "128",
    "--device",
    "cpu",
    "--synthetic",
    "--synthetic_images",
    "8",
    "--synthetic_size",
    "64",
    "48",
    "--warmup",
    "1",
    "--iters",
    "2",
    "--num_workers",
    "1",
    "--peak_tflops",
    "0.5",
    "--threads",
    "1",
]


@pytest.fixture(scope="module")
def bench():
    threads = (
        torch.get_num_threads()
    )  # the benchmark's --threads 1 (fast on a shared machine) is undone after
    import benchmarks.train_throughput as module

    yield module
    torch.set_num_threads(threads)


def test_compare_reports_every_field_for_both_paths(bench, tmp_path, capsys):
    out = tmp_path / "result.json"
    report = bench.main([*TINY, "--compare", "--json", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    flops = dino_step_flops_per_image("vit_tiny", 8, 32, 16, 2, out_dim=128)
    assert report["flops_per_image"] == pytest.approx(flops)
    assert report["compiled_graphs"] == 0  # no compile on CPU unless asked
    default, baseline = report["results"]
    assert (default["path"], baseline["path"]) == ("default", "baseline")
    assert default["settings"]["gpu_augment"] and default["settings"]["fused_attention"]
    assert not baseline["settings"]["gpu_augment"] and not baseline["settings"]["fused_attention"]
    for result in (default, baseline):
        rate = result["img_per_s"]
        b = result["breakdown_s"]
        assert rate > 0 and rate == pytest.approx(
            8 / b["wall"]
        )  # 2 steps x 4 images in the timed window
        assert result["achieved_tflops"] == pytest.approx(flops * rate / 1e12)
        assert result["mfu"] == pytest.approx(result["achieved_tflops"] / 0.5)
        assert 0.0 <= result["data_wait_fraction"] <= 1.0
        assert result["data_wait_fraction"] == pytest.approx(b["data_wait_host"] / b["wall"])
        assert b["forward_backward_step"] > 0
        assert (
            b["data_wait_host"] + b["decode_and_augment"] + b["forward_backward_step"]
            <= b["wall"] * 1.001
        )
        assert result["peak_memory_gb"] > 0 and result["peak_memory_kind"] == "process_max_rss"
        assert math.isfinite(result["mean_loss"]) and result["mean_loss"] > 0
        assert f"[{result['path']}] " in printed
    assert (
        default["breakdown_s"]["decode_and_augment"] > 0
    )  # crops made in the step, not in the workers
    for text in (
        "img/s",
        "TFLOP/s",
        "MFU",
        "peak memory",
        "data wait",
        "speed-up default/baseline",
    ):
        assert text in printed


def test_baseline_alone_and_argument_errors(bench, capsys):
    report = bench.main([*TINY, "--baseline", "--num_workers", "0", "--iters", "1"])
    (result,) = report["results"]
    assert result["path"] == "baseline" and result["settings"]["precision"] == "fp32"  # fp32 on CPU
    assert "speed-up" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.parse_args(["--arch", "vit_tiny"])  # neither --data_path nor --synthetic


def test_the_benchmark_times_the_trainers_own_step_and_collates(bench):
    """No copies: the step, the crops and the collates are the trainer's objects."""
    from benchmarks import train_data

    assert bench.train_step is engine.train_step and bench.batch_crops is engine.batch_crops
    args = SimpleNamespace(
        synthetic=True, synthetic_images=3, synthetic_size=(40, 30), seed=0, data_path=None
    )
    cfg = bench.bench_config(bench.parse_args([*TINY]))
    assert train_data.build_dataset(args, True, True, cfg)[1] is collate_bytes
    assert train_data.build_dataset(args, False, False, cfg)[1] is collate_skip_none
    dataset, collate = train_data.build_dataset(args, True, False, cfg)  # decoded in the workers
    batch = collate([dataset[0], (b"", 1), dataset[2]])
    assert batch.skipped == 1 and batch.labels.tolist() == [0, 2]
    assert [tuple(im.shape) for im in batch.images] == [(3, 30, 40)] * 2 and batch.images[
        0
    ].dtype == torch.uint8


def test_decoding_in_the_workers_runs_the_same_step(bench):
    report = bench.main([*TINY, "--num_workers", "0", "--iters", "1", "--decode_on", "workers"])
    (result,) = report["results"]
    assert result["path"] == "default" and not result["settings"]["decode_on_device"]
    assert math.isfinite(result["mean_loss"]) and result["breakdown_s"]["decode_and_augment"] > 0
