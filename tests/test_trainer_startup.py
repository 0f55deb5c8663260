"""Start-up checks of the training command: each bad setting is one line and exit status 2,
found before any model is built; a warm-up as long as the run is shortened with a warning."""

from __future__ import annotations

import logging

import pytest
import torch

from tests.test_data import make_image_folder
from tests.tiny_run import tiny_cli_args
from trainer import run
from trainer.train import build, loop, self_check
from trainer.train.config import StartupError, make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_models(monkeypatch):
    """Building a model fails the test: the checks must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was built before the start-up checks")

    monkeypatch.setattr(build, "build_context", forbidden)


def _exit_code_and_message(argv, caplog) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="trainer.run"):
        with pytest.raises(SystemExit) as info:
            run.cli(argv)
    errors = [r.getMessage() for r in caplog.records if r.name == "trainer.run"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return info.value.code, errors[0]


def test_unwritable_output_dir_exits_2_before_training(tmp_path, caplog, no_models):
    data = make_image_folder(tmp_path / "data", {"": 4})
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, message = _exit_code_and_message(tiny_cli_args(data, blocker / "out"), caplog)
    assert code == 2
    assert "--output_dir" in message and "cannot be written" in message and "writable" in message


@pytest.mark.parametrize("kind", ["missing", "empty_folder", "empty_string"])
def test_bad_data_path_exits_2_before_models(tmp_path, caplog, no_models, kind):
    data = {"missing": tmp_path / "nowhere", "empty_folder": tmp_path / "empty", "empty_string": ""}
    (tmp_path / "empty").mkdir()
    code, message = _exit_code_and_message(tiny_cli_args(data[kind], tmp_path / "out"), caplog)
    assert code == 2 and message.startswith("error: --data_path")
    assert "folder" in message


def test_too_few_images_is_a_startup_error(tmp_path, caplog, no_models):
    data = make_image_folder(tmp_path / "data", {"": 2})
    code, message = _exit_code_and_message(tiny_cli_args(data, tmp_path / "out"), caplog)
    assert code == 2 and "fewer than one batch" in message


def test_output_dir_check_runs_before_the_run_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "build_run", lambda *a: pytest.fail("built before the check"))
    cfg = make_config(data_path=str(tmp_path), output_dir=str(tmp_path / "f" / "o"), device="cpu")
    (tmp_path / "f").write_text("")
    with pytest.raises(StartupError, match="cannot be written"):
        loop.train(cfg)


@pytest.mark.parametrize(("epochs", "warmup", "expected"), [(3, 10, 2), (3, 3, 2), (1, 1, 0)])
def test_warmup_not_shorter_than_the_run_is_clamped_with_a_warning(
    caplog, epochs, warmup, expected
):
    with caplog.at_level(logging.WARNING, logger="trainer.train.config"):
        cfg = make_config(epochs=epochs, warmup_epochs=warmup)
    assert cfg.warmup_epochs == expected
    assert any(
        f"--warmup_epochs {warmup} does not fit --epochs {epochs}: using {expected}"
        == r.getMessage()
        for r in caplog.records
    )


def test_teacher_temperature_warmup_longer_than_the_run_is_clamped(caplog):
    with caplog.at_level(logging.WARNING, logger="trainer.train.config"):
        cfg = make_config(epochs=3, warmup_epochs=1, warmup_teacher_temp_epochs=30)
    assert (cfg.warmup_epochs, cfg.warmup_teacher_temp_epochs) == (1, 3)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "--warmup_teacher_temp_epochs 30" in warning and "using 3" in warning


def test_shorter_warmup_is_kept_silently(caplog):
    with caplog.at_level(logging.WARNING, logger="trainer.train.config"):
        assert make_config(epochs=3, warmup_epochs=2).warmup_epochs == 2
    assert not caplog.records


def test_default_warmup_on_a_short_run_trains(tmp_path, tiny_networks):
    """The authors' default --warmup_epochs 10 on a 2-epoch run used to end in a traceback."""
    data = make_image_folder(tmp_path / "data", {"": 4})
    out = tmp_path / "out"
    argv = tiny_cli_args(
        data, out, epochs=2, saveckp_freq=0, warmup_epochs=10, warmup_teacher_temp_epochs=30
    )
    last = run.main(argv)
    assert last["epoch"] == 1 and (out / "checkpoint.pth").is_file()


# -- the start-up self-check of the device-only paths (item 19) --------------------------
def _small_cfg(**over):
    values = dict(
        device="cpu",
        arch="vit_tiny",
        patch_size=4,
        global_crops_size=16,
        local_crops_size=8,
        local_crops_number=2,
        out_dim=16,
    )
    return make_config(**{**values, **over})


def test_self_checks_pass_on_cpu_and_keep_the_paths(caplog):
    with caplog.at_level(logging.INFO, logger="trainer.train.self_check"):
        paths = self_check.run_self_checks(_small_cfg(), torch.device("cpu"), gpu_augment=True)
    assert paths == self_check.EnabledPaths(gpu_augment=True, fused_optimizer=True, compile=False)
    passed = {r.getMessage().split()[1] for r in caplog.records if "passed" in r.getMessage()}
    assert passed == {"multicrop", "fused_adamw"}  # PIL decodes on CPU; no --compile


def test_decode_check_compares_with_pil(monkeypatch):
    cpu = torch.device("cpu")
    self_check.check_decode(_small_cfg(), cpu)  # libjpeg-turbo via torchvision vs PIL
    real = self_check.device_decode
    monkeypatch.setattr(self_check, "device_decode", lambda b, d: real(b, d) // 2)
    with pytest.raises(self_check.SelfCheckFailed, match="differ from PIL"):
        self_check.check_decode(_small_cfg(), cpu)


PATH_OF_CHECK = {"multicrop": "gpu_augment", "fused_adamw": "fused_optimizer", "compile": "compile"}


@pytest.mark.parametrize("failing", sorted(PATH_OF_CHECK))
def test_a_failing_check_warns_and_falls_back(monkeypatch, caplog, failing):
    def broken(cfg, device):
        raise RuntimeError("injected device fault")

    monkeypatch.setitem(self_check.CHECKS, "compile", lambda cfg, device: None)  # no inductor
    monkeypatch.setitem(self_check.CHECKS, failing, broken)
    with caplog.at_level(logging.WARNING, logger="trainer.train.self_check"):
        paths = self_check.run_self_checks(
            _small_cfg(compile=True), torch.device("cpu"), gpu_augment=True
        )
    disabled = [name for name in PATH_OF_CHECK.values() if not getattr(paths, name)]
    assert disabled == [PATH_OF_CHECK[failing]]
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"self-check {failing} failed" in warning and "injected device fault" in warning
    assert self_check.FALLBACKS[failing] in warning


def test_a_run_falls_back_to_cpu_crops_when_the_device_crops_fail(
    tmp_path, monkeypatch, tiny_networks
):
    def broken(cfg, device):
        raise RuntimeError("injected multicrop fault")

    monkeypatch.setitem(self_check.CHECKS, "multicrop", broken)
    built = {}
    real_context = build.build_context

    def spy(cfg, device, precision, niter, options=None):
        built["gpu_multicrop"] = options.gpu_multicrop
        built["fused"] = options.fused_optimizer
        return real_context(cfg, device, precision, niter, options)

    monkeypatch.setattr(build, "build_context", spy)
    data = make_image_folder(tmp_path / "data", {"": 4})
    last = run.main(tiny_cli_args(data, tmp_path / "out", gpu_augment="true"))
    assert last["epoch"] == 0 and built == {"gpu_multicrop": None, "fused": True}


def test_the_command_prints_one_line_and_exits_2(tmp_path):
    """``python trainer/run.py`` itself: no traceback, one line on stderr, status 2."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(run.__file__)
    argv = tiny_cli_args(tmp_path / "no_such_folder", tmp_path / "out")
    done = subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--data_path" in lines[0] and "does not exist" in lines[0], lines
    assert "Traceback" not in done.stderr
