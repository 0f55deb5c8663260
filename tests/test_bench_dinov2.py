"""The DINOv2 latency benchmark runs end to end (tiny models) and reports every row."""

from __future__ import annotations

from benchmarks.dinov2_latency import main


def test_dinov2_latency_smoke(tmp_path):
    rows = main(["--tiny", "--repeats", "1", "--json", str(tmp_path / "rows.json")])
    assert [r.arch for r in rows] == ["dino_vits16", "dinov2_vits14", "dinov2_vits14_reg"] * 2
    assert [r.path.split()[0] for r in rows] == ["64px", "70px", "70px"] * 2
    assert all(r.p50_ms > 0 and r.n == 1 for r in rows)
    text = (tmp_path / "rows.json").read_text()
    assert text.count('"p50_ms"') == 6 and text.count('"cpu_p50_ms"') == 6
