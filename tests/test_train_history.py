"""On resume, the lines of the epochs that run again leave log.txt and metrics.jsonl."""

from __future__ import annotations

import json

from trainer.train.loop import trim_history


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_lines_of_epochs_run_again_are_moved_aside(tmp_path):
    log = [json.dumps({"epoch": e, "train_loss": 9.0 - e}) for e in range(3)]
    (tmp_path / "log.txt").write_text("\n".join(log) + "\n")
    steps = [json.dumps({"step": i, "epoch": i // 2, "loss": 1.0}) for i in range(6)]
    torn = '{"step": 6, "epoch": 3, "lo'  # a kill in mid-write
    (tmp_path / "metrics.jsonl").write_text("\n".join([*steps, torn]) + "\n")
    trim_history(tmp_path, 2)  # checkpoint.pth says: epochs 0 and 1 are done
    assert _lines(tmp_path / "log.txt") == log[:2]
    assert _lines(tmp_path / "log.txt.replaced") == log[2:]
    assert _lines(tmp_path / "metrics.jsonl") == steps[:4]
    assert _lines(tmp_path / "metrics.jsonl.replaced") == [*steps[4:], torn]
    trim_history(tmp_path, 2)  # nothing more to move
    assert _lines(tmp_path / "log.txt.replaced") == log[2:]


def test_a_fresh_run_keeps_nothing_of_an_earlier_one_without_checkpoint(tmp_path):
    (tmp_path / "log.txt").write_text(json.dumps({"epoch": 0}) + "\n")
    trim_history(tmp_path, 0)
    assert _lines(tmp_path / "log.txt") == []
    trim_history(tmp_path / "missing", 0)  # no files: nothing to do
