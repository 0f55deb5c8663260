"""The training bar: one 100% per epoch, warnings on lines of their own, a readable title."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import pytest

from tests.test_data import make_image_folder
from tests.tiny_run import tiny_cli_args
from trainer import run
from trainer.train import distributed, engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WARNING_TEXT = "possible uniform collapse: test"


def _visible_lines(text: str) -> list[str]:
    """What a terminal shows: per line, the text after the last carriage return."""
    return [line.split("\r")[-1] for line in text.split("\n")]


def test_the_title_numbers_epochs_as_the_run_folders_and_says_when_a_budget_may_change_it():
    assert engine.epoch_label(0, 7) == "epoch 0 (1 of 7)"
    assert engine.epoch_label(6, 7) == "epoch 6 (7 of 7)"
    assert engine.epoch_label(1, 40, "planned") == "epoch 1 (2 of at most 40, time budget)"
    assert engine.epoch_label(2, 9, "fitted") == "epoch 2 (3 of 9, fitted to the time budget)"


def test_each_epoch_draws_100_percent_once_and_warnings_keep_their_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    data = make_image_folder(tmp_path / "data", {"": 12})
    monkeypatch.setattr(engine, "PROGRESS_MININTERVAL_S", 0.0)  # draw at every step
    real_progress = engine._progress
    monkeypatch.setattr(engine, "_progress", lambda total, desc: real_progress(total, desc, None))
    monkeypatch.setattr(engine, "collapse_warning", lambda values, out_dim: WARNING_TEXT)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)  # a console handler, as basicConfig makes
    root.addHandler(handler)
    try:
        run.main(
            tiny_cli_args(data, tmp_path / "run", epochs=2, log_every=1, time_limit_minutes=60)
        )
    finally:
        root.removeHandler(handler)
        logging.captureWarnings(False)  # the run's setup_logging turned it on
    err = capsys.readouterr().err
    assert err.count("100%") == 2  # once per epoch (3 steps each), not once more at close
    lines = _visible_lines(err)
    warned = [line for line in lines if WARNING_TEXT in line]
    assert len(warned) == 2  # once an epoch
    assert warned == [f"epoch {e} step 0: {WARNING_TEXT}" for e in (0, 1)]  # no bar text before
    finals = [line for line in lines if "100%" in line]
    assert [line.split(":")[0] for line in finals] == [
        "epoch 0 (1 of at most 2, time budget)",
        "epoch 1 (2 of at most 2, time budget)",
    ]
    assert all("3/3" in line and "loss=" in line for line in finals)


def test_python_warnings_go_through_the_log(caplog: pytest.LogCaptureFixture):
    logging.captureWarnings(False)
    try:
        distributed.setup_logging()
        with caplog.at_level(logging.WARNING, logger="py.warnings"):
            warnings.warn("a library warning", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    assert any("a library warning" in r.getMessage() for r in caplog.records)
