"""Smoke test of benchmarks.attention_latency (tiny model, in-process only)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="module")
def bench():
    import benchmarks.attention_latency as module

    return module


def test_tiny_in_process_run(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = bench.main(["--tiny", "--no-http", "--repeats", "2", "--json", str(out)])
    assert [r.path for r in rows] == [
        "baseline (all explicit)",
        "fast path (model only)",
        "service in-process",
    ]
    assert all(r.n == 2 and r.p50_ms > 0 and r.p95_ms >= r.p50_ms for r in rows)
    assert rows[0].speedup_latency == pytest.approx(1.0)
    assert (
        out.exists() and "speedup_latency" in out.read_text() and "max_speedup" in out.read_text()
    )
    assert "summary" in capsys.readouterr().out


def test_baseline_and_fast_path_compute_the_same_maps(bench):
    model = bench.build_model("tiny", 8)
    x = torch.randn(1, 3, 40, 56)
    base = bench.baseline_fn(model, x)()
    fast = bench.fast_fn(model, x)()
    assert base.shape == (1, 35) and fast.shape == (1, 1, 5, 7)
    assert torch.allclose(base.reshape(1, 5, 7), fast[0], atol=1e-6)
    assert model.blocks[0].attn.fused_attn  # the baseline restores the fused setting


def test_bad_arch_is_refused(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--archs", "vit_huge"])


def test_roofline_counts_the_fast_path_as_the_full_forward_less_the_last_blocks_unneeded_work(
    bench, capsys
):
    from trainer.train.flops import vit_forward_flops

    model = bench.build_model("vit_small", 16)
    r = bench.roofline("vit_s16", model, 64, "fp32", baseline_ms=10.0)
    n, d = (64 // 16) ** 2 + 1, 384
    full = vit_forward_flops(d, 12, 6, 16, 64)
    last_block = 2 * n * d * (4 * d + 2 * 4 * d) + 4 * n * n * d
    kept_of_last = (
        2 * n * d * d + 2 * d * d + 4 * n * d
    )  # K for every token, Q and attention for the CLS row
    assert (r.linear_gflop + r.attention_gflop) * 1e9 == pytest.approx(
        full - last_block + kept_of_last, rel=1e-12
    )
    assert r.gemm_gflops > 0 and r.sdpa_gflops > 0
    expected_floor = 1e3 * (r.linear_gflop / r.gemm_gflops + r.attention_gflop / r.sdpa_gflops)
    assert r.floor_ms == pytest.approx(expected_floor) and r.max_speedup == pytest.approx(
        10.0 / r.floor_ms
    )
    bench.print_roofline(r)
    assert "at most x" in capsys.readouterr().out


def test_first_request_and_rethreshold_over_http(bench, tmp_path, capsys):
    out = tmp_path / "explore.json"
    bench.main(["--explore", "--tiny", "--repeats", "2", "--json", str(out)])
    result = json.loads(out.read_text())["explore"][0]
    assert result["all_cached"] and result["n"] == 2 and result["overlay_format"] == "jpeg"
    assert result["first_p95_ms"] >= result["first_p50_ms"] > 0 and result["rethreshold_p95_ms"] > 0
    assert result["model_p50_ms"] > 0 and result["overlays_p50_ms"] > 0
    assert result["ratio_p50"] == pytest.approx(
        result["rethreshold_p50_ms"] / result["first_p50_ms"]
    )
    assert "re-threshold p50=" in capsys.readouterr().out
