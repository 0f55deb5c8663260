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
