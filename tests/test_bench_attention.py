"""Smoke test of benchmarks/attention_latency.py (tiny model, in-process only)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("attention_latency", ROOT / "benchmarks" / "attention_latency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_tiny_in_process_run(bench, tmp_path, capsys):
    out = tmp_path / "rows.json"
    rows = bench.main(["--tiny", "--no-http", "--repeats", "2", "--json", str(out)])
    assert [r.path for r in rows] == ["baseline (all explicit)", "fast path (model only)", "service in-process"]
    assert all(r.n == 2 and r.p50_ms > 0 and r.p95_ms >= r.p50_ms for r in rows)
    assert rows[0].speedup_latency == pytest.approx(1.0)
    assert out.exists() and "speedup_latency" in out.read_text()
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
