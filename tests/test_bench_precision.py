"""benchmarks.precision_modes smoke run (tiny model): every mode measured, fp32 equals itself."""

from __future__ import annotations

import pytest

from trainer.model.inference_precision import native_precisions


@pytest.mark.slow
def test_every_native_mode_is_measured_against_fp32(capsys):
    import torch

    from benchmarks import attention_latency

    modes = native_precisions(torch.device("cpu"))
    assert attention_latency.several_precisions(["--precision", ",".join(modes)])
    assert not attention_latency.several_precisions(["--precision", "bf16"])
    from benchmarks.precision_modes import main

    results = main(["--tiny", "--modes", ",".join(modes)])
    assert [r.mode for r in results] == modes
    fp32 = results[0]
    assert fp32.mask_agreement == 1.0 and fp32.max_map_diff == 0.0
    assert all(r.p50_ms > 0 and 0 <= r.mask_agreement <= 1 for r in results)
    assert "authors' fp32" in capsys.readouterr().out


@pytest.mark.slow
def test_a_checkpoint_gets_its_own_mask_figures(tmp_path, capsys):
    from benchmarks.precision_modes import checkpoint_quality, parse_args
    from tests.service_helpers import write_tiny_checkpoint

    path, _ = write_tiny_checkpoint(tmp_path, "trained_tiny")
    args = parse_args(["--tiny", "--modes", "fp32,bf16", "--checkpoint", str(path)])
    quality = checkpoint_quality(args)
    assert quality["fp32"][:2] == (1.0, 0.0) and 0 <= quality["bf16"][0] <= 1
    out = capsys.readouterr().out
    assert "trained_tiny fp32  masks equal to fp32 100.00%" in out and "trained_tiny bf16" in out
