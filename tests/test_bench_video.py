"""benchmarks.video_throughput smoke test (tiny models, tiny clip); both sides agree."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def bench():
    import benchmarks.video_throughput as module

    return module


def test_tiny_run_reports_every_stage(bench, tmp_path, capsys):
    out = tmp_path / "results.json"
    results = bench.main(
        ["--tiny", "--archs", "vit_s16", "--frames", "6", "--batch", "4", "--json", str(out)]
    )
    assert [r.path for r in results] == [
        "authors' per-frame loop",
        "service stages (one at a time)",
        "service end to end (overlapped)",
    ]
    assert all(r.frames == 6 and r.total_fps > 0 for r in results)
    assert all(r.decode_fps > 0 and r.model_fps > 0 and r.encode_fps > 0 for r in results[:2])
    assert results[0].speedup == pytest.approx(1.0)
    assert len(json.loads(out.read_text())) == 3 and "summary" in capsys.readouterr().out


def test_the_authors_mean_map_matches_the_service_maps(bench, tmp_path):
    """Same frame and size: the authors' full-attention mean is the service's CLS maps' mean."""
    from backend.analysis.images import prepare

    model = bench.build_model("vit_small", 8, tiny=True)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, size=(48, 48, 3), dtype=np.uint8))
    model.set_fused_attention(False)
    theirs = bench.authors_model(model, img, 8, 48, 0.6)
    model.set_fused_attention(True)
    prepared = prepare(img, 48, "keep_aspect", 8, bench.MEAN, bench.STD)
    args = SimpleNamespace(batch=4)
    service, loaded = bench.loaded_service("vit_small", model, tmp_path, args)
    ours = service.batch_cls_attention(loaded, prepared.tensor, -1)[0]
    expected = np.repeat(np.repeat(ours.mean(0).numpy(), 8, 0), 8, 1)
    np.testing.assert_allclose(theirs, expected, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(ours).all()


def test_each_precision_reaches_the_job_and_is_compared_with_fp32(bench):
    from trainer.model.inference_precision import native_precisions

    modes = native_precisions(torch.device("cpu"))  # the modes this machine runs natively
    argv = ["--tiny", "--archs", "vit_s8", "--frames", "4", "--batch", "2"]
    requested = list(reversed(modes))
    results = bench.main([*argv, "--precision", ",".join(requested)])
    order = ["fp32", *[m for m in requested if m != "fp32"]]  # fp32 first: the reference
    assert [r.precision for r in results] == ["fp32", *[m for m in order for _ in (0, 1)]]
    stages = [r for r in results if r.path.startswith("service stages")]
    jobs = [r for r in results if r.path.startswith("service end to end")]
    assert [r.precision for r in jobs] == order  # read back from each job's result summary
    assert stages[0].mask_agreement == 1.0 and stages[0].max_map_diff == 0.0
    for r in stages[1:]:
        assert 0.5 < r.mask_agreement <= 1.0 and 0.0 <= r.max_map_diff < 0.1
    assert all(r.frames == 4 and r.total_fps > 0 for r in results)


@pytest.mark.parametrize("value", ["fp16", "", "fp32,double"])
def test_an_unknown_precision_is_refused_with_the_choices(bench, capsys, value):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--precision", value])
    assert exc.value.code == 2 and "choose from fp32, bf16, int8, auto" in capsys.readouterr().err
