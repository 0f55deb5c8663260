"""benchmarks.faults smoke run: every scenario against a real uvicorn, no unexpected 5xx."""

from __future__ import annotations

import math


def test_quick_fault_run_reports_every_figure(capsys):
    from benchmarks import faults

    figures = faults.main(["--quick"])
    out = capsys.readouterr().out
    for line in ("faults tried:", "5xx replies:", "server peak RSS:", "freed the worker in"):
        assert line in out
    assert figures.faults > 20 and figures.server_errors == 0, out
    assert set(figures.error_codes) <= {"503 model_unavailable", "503 busy"}, out
    assert all(figures.checks.values()) and len(figures.checks) == 9, out
    assert figures.stalled_job_end_s < 5.0 and figures.faulty_job_end_s < 10.0, out
    assert math.isfinite(figures.peak_rss_mb) and figures.peak_rss_mb > 0
