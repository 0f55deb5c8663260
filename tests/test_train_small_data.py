"""A small training folder: said at start, and with --adapt_small_data a sharper teacher."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.test_data import make_image_folder
from tests.tiny_run import tiny_cli_args
from trainer import run
from trainer.train.config import make_config, parse_config
from trainer.train.small_data import SMALL_FOLDER_IMAGES, adapt_to_folder, small_folder_changes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_only_small_folders_with_the_flag_get_a_sharper_teacher(caplog):
    on = make_config(adapt_small_data=True, teacher_temp=0.04, warmup_teacher_temp=0.04)
    assert small_folder_changes(on, 200) == {"warmup_teacher_temp": 0.025, "teacher_temp": 0.025}
    assert small_folder_changes(on, SMALL_FOLDER_IMAGES) == {}
    assert small_folder_changes(make_config(adapt_small_data=False), 200) == {}
    sharp = make_config(adapt_small_data=True, warmup_teacher_temp=0.02, teacher_temp=0.04)
    assert small_folder_changes(sharp, 200) == {"teacher_temp": 0.025}  # never raised
    with caplog.at_level(logging.WARNING):
        assert adapt_to_folder(on, 5000, 156) is on
        assert not caplog.records  # a large folder: nothing to say
        adapted = adapt_to_folder(on, 200, 6)
    assert (adapted.warmup_teacher_temp, adapted.teacher_temp, on.teacher_temp) == (
        0.025,
        0.025,
        0.04,
    )
    (record,) = caplog.records
    assert "small training folder: 200 images (6 steps per epoch" in record.getMessage()
    assert "--teacher_temp 0.04 -> 0.025" in record.getMessage()


def test_the_cpu_recipe_adapts():
    cfg = parse_config(["--config", str(ROOT / "trainer/recipes/vit_tiny_duts_cpu.yaml")])
    assert cfg.adapt_small_data and small_folder_changes(cfg, 200)


@pytest.mark.parametrize("adapt", [True, False])
def test_a_run_on_a_small_folder_says_so_and_records_the_temperatures_it_used(
    tmp_path, caplog, adapt
):
    data = make_image_folder(tmp_path / "data", {"": 8})
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="trainer"):
        run.main(tiny_cli_args(data, out, adapt_small_data=str(adapt).lower(), log_every=1))
    (warning,) = [r.getMessage() for r in caplog.records if "small training folder" in r.msg]
    assert warning.startswith("small training folder: 8 images (2 steps per epoch")
    assert ("-> 0.025" in warning) is adapt
    assert ("--adapt_small_data true lowers" in warning) is not adapt
    expected = 0.025 if adapt else 0.04
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["args"]["teacher_temp"] == ckpt["args"]["warmup_teacher_temp"] == expected
    (line,) = [json.loads(x) for x in (out / "log.txt").read_text().splitlines()]
    assert line["train_teacher_temp"] == pytest.approx(expected)
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps and all(s["teacher_temp"] == pytest.approx(expected) for s in steps)
