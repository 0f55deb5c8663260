"""Resuming past a corrupted ``checkpoint.pth``: the newest readable ``checkpointNNNN.pth``
is used and named in the log; ``--resume_from`` picks a file; with nothing to fall back on the
command says what is wrong and what to do, with exit status 2."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tests.test_data import make_image_folder
from tests.tiny_run import tiny_cli_args
from trainer import run
from trainer.train.loop import numbered_checkpoints

pytestmark = pytest.mark.usefixtures("one_torch_thread", "tiny_networks")


@pytest.fixture
def two_epoch_run(tmp_path):
    """A finished 2-epoch run keeping checkpoint0000.pth and checkpoint0001.pth."""
    data = make_image_folder(tmp_path / "data", {"": 4})
    out = tmp_path / "run"
    run.main(tiny_cli_args(data, out, epochs=2, saveckp_freq=1))
    return data, out


def _epochs_logged(out) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "log.txt").read_text().splitlines()]


def test_numbered_checkpoints_newest_first(tmp_path):
    for name in ("checkpoint0002.pth", "checkpoint0010.pth", "checkpoint.pth", "checkpointx.pth"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in numbered_checkpoints(tmp_path)] == [
        "checkpoint0010.pth",
        "checkpoint0002.pth",
    ]


def test_corrupt_checkpoint_falls_back_to_newest_numbered(two_epoch_run, caplog):
    data, out = two_epoch_run
    (out / "checkpoint.pth").write_bytes(b"\x00garbage, a torn write")
    (out / "checkpoint0001.pth").write_bytes((out / "checkpoint0001.pth").read_bytes()[:100])
    with caplog.at_level(logging.INFO):
        run.main(tiny_cli_args(data, out, epochs=3, saveckp_freq=1))
    messages = [r.getMessage() for r in caplog.records]
    assert any("checkpoint.pth is unreadable" in m for m in messages)
    assert any("checkpoint0001.pth is unreadable too" in m for m in messages)
    assert any("falling back" in m and "checkpoint0000.pth" in m for m in messages)
    # checkpoint0000.pth was written after epoch 0: epochs 1 and 2 run again, logged once
    assert _epochs_logged(out) == [0, 1, 2]
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 3


def test_resume_from_flag_picks_the_file(two_epoch_run, caplog):
    data, out = two_epoch_run
    first = out / "checkpoint0000.pth"
    with caplog.at_level(logging.INFO):
        run.main(tiny_cli_args(data, out, epochs=2, saveckp_freq=0, resume_from=first))
    assert any(f"resumed from {first} at epoch 1" in r.getMessage() for r in caplog.records)
    assert _epochs_logged(out) == [0, 1]  # the replaced epoch 1 line: log.txt.replaced


def _cli_error(argv, caplog) -> tuple[int, str]:
    caplog.clear()
    with pytest.raises(SystemExit) as info:
        run.cli(argv)
    errors = [r.getMessage() for r in caplog.records if r.name == "trainer.run"]
    assert len(errors) == 1
    return info.value.code, errors[0]


def test_corrupt_checkpoint_without_fallback_says_what_to_do(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", {"": 4})
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pth").write_bytes(b"PK\x03\x04 truncated")
    code, message = _cli_error(tiny_cli_args(data, out), caplog)
    assert code == 2
    assert "checkpoint.pth" in message and "unreadable" in message
    assert "--resume_from" in message and "start afresh" in message


def test_resume_from_bad_paths_exit_2(tmp_path, caplog):
    data = make_image_folder(tmp_path / "data", {"": 4})
    not_a_checkpoint = tmp_path / "weights.pth"
    torch.save({"student": {}}, not_a_checkpoint)
    code, message = _cli_error(
        tiny_cli_args(data, tmp_path / "a", resume_from=tmp_path / "none.pth"), caplog
    )
    assert code == 2 and "no such file" in message
    code, message = _cli_error(
        tiny_cli_args(data, tmp_path / "b", resume_from=not_a_checkpoint), caplog
    )
    assert code == 2 and "not a training checkpoint" in message


def test_checkpoint_of_another_architecture_exits_2(two_epoch_run, caplog):
    data, out = two_epoch_run
    code, message = _cli_error(tiny_cli_args(data, out, epochs=3, out_dim=32), caplog)
    assert code == 2 and "out_dim=16" in message and "another --output_dir" in message
