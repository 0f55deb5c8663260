"""``python -m trainer.export``: a run's teacher backbone, round-tripped exactly, with its card."""

from __future__ import annotations

import json
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.tiny_run import seg_result, train_tiny_run
from trainer import export, model_card
from trainer.model.checkpoint import (
    atomic_torch_save,
    default_file_mode,
    load_backbone,
    read_backbone,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny_run(tmp_path_factory.mktemp("export"))
    finally:
        torch.set_num_threads(threads)


def _backbone_state(run_dir: Path, which: str) -> dict[str, torch.Tensor]:
    """The reference: the network's ``backbone.*`` tensors straight from checkpoint.pth."""
    ckpt = torch.load(run_dir / "checkpoint.pth", map_location="cpu", weights_only=True)
    return {
        k.removeprefix("backbone."): v for k, v in ckpt[which].items() if k.startswith("backbone.")
    }


@pytest.mark.parametrize(
    ("dtype", "torch_dtype", "stored"),
    [
        ("fp32", torch.float32, "F32"),
        ("fp16", torch.float16, "F16"),
        ("bf16", torch.bfloat16, "BF16"),
    ],
)
def test_the_export_round_trips_the_teacher_exactly(run_dir, tmp_path, dtype, torch_dtype, stored):
    out = tmp_path / "m.safetensors"
    export.export_run(run_dir, out, dtype)
    reference = _backbone_state(run_dir, "teacher")
    model, info = load_backbone(out)
    loaded = model.state_dict()
    assert set(loaded) == set(reference)
    for key, value in reference.items():  # the stored dtype's rounding, nothing else
        torch.testing.assert_close(loaded[key], value.to(torch_dtype).float(), rtol=0, atol=0)
    with safe_open(str(out), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {stored}
    ckpt = torch.load(run_dir / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert (info.arch, info.patch_size, info.epoch, info.trained) == (
        "vit_tiny",
        16,
        ckpt["epoch"],
        True,
    )


def test_the_metadata_holds_the_card_built_from_log_txt(run_dir, tmp_path):
    out = tmp_path / "m.safetensors"
    extra = export.export_run(run_dir, out, "fp16")
    _, info = read_backbone(out)
    assert info.extra == json.loads(json.dumps(extra))
    epochs = [json.loads(line) for line in (run_dir / "log.txt").read_text().splitlines()]
    card = info.extra["model_card"]
    assert card["train"]["epochs"] == len(epochs) == 2
    assert card["train"]["final_loss"] == epochs[-1]["train_loss"]
    assert card["dataset"] == "photos" and card["arch_label"] == "ViT-Ti/16"
    assert info.extra["summary"] == model_card.summary(card)
    assert info.extra["summary"].startswith("ViT-Ti/16 pretrained with DINO on photos (2 epochs)")
    fp32 = tmp_path / "m32.safetensors"
    export.export_run(run_dir, fp32, "fp32")
    assert 0.45 < out.stat().st_size / fp32.stat().st_size < 0.55  # fp16 halves the file


def test_the_student_can_be_exported_instead(run_dir, tmp_path):
    out = tmp_path / "s.safetensors"
    export.export_run(run_dir, out, "fp32", which="student")
    model, _ = load_backbone(out)
    student, teacher = _backbone_state(run_dir, "student"), _backbone_state(run_dir, "teacher")
    for key, value in student.items():
        torch.testing.assert_close(model.state_dict()[key], value.float(), rtol=0, atol=0)
    assert any(not torch.equal(student[k], teacher[k]) for k in student)  # the EMA lags behind


@pytest.mark.slow  # a real `python -m trainer.export` process
def test_the_command_line_adds_the_evaluations_to_the_summary(run_dir, tmp_path):
    seg = tmp_path / "seg.json"
    seg.write_text(json.dumps(seg_result(41.25, [41.25, 30.0, 20.0], [2, 1, 0], 3, 64)))
    out = tmp_path / "cli.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "trainer.export",
        str(run_dir),
        str(out),
        "--dtype",
        "fp16",
        "--seg",
        str(seg),
        "--dataset",
        "DUTS-TR",
        "--hardware",
        "1x test GPU",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _, info = read_backbone(out)
    assert info.extra["summary"] == (
        "ViT-Ti/16 pretrained with DINO on DUTS-TR (2 epochs on 1x test GPU); mask Jaccard 41.2"
    )
    assert info.extra["summary"] in done.stderr  # logged
    assert info.extra["model_card"]["jaccard"]["trained"]["per_head_jaccard"][1] == 30.0


def test_bad_arguments_say_what_is_wrong(run_dir, tmp_path, capsys):
    cases = [
        ([str(tmp_path), str(tmp_path / "a.safetensors")], "checkpoint.pth does not exist"),
        ([str(run_dir), str(tmp_path / "a.pth")], "OUT must be a folder or end in .safetensors"),
        ([str(run_dir), str(tmp_path), "--name", "teacher_backbone"], "runs would collide"),
        ([str(run_dir), str(tmp_path), "--name", "../up"], "not a usable model name"),
        (
            [str(run_dir), str(tmp_path / "a.safetensors"), "--name", "b"],
            "either OUT as a .safetensors file or --name",
        ),
        (
            [str(run_dir), str(tmp_path / "a.safetensors"), "--dtype", "fp8"],
            r"invalid choice: 'fp8' \(choose from '?fp32'?, '?fp16'?, '?bf16'?\)",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            export.main(argv)
        assert exc.value.code == 2
        assert re.search(message, capsys.readouterr().err)
    with pytest.raises(ValueError, match="unknown dtype 'int8'; choose one of fp32, fp16, bf16"):
        export.export_run(run_dir, tmp_path / "a.safetensors", "int8")
    assert not list(tmp_path.glob("a.*"))


def test_the_file_is_named_after_the_run_and_the_service_labels_it(run_dir, tmp_path, capsys):
    from backend.models.entries import inspect_file

    models = tmp_path / "models"
    extra = export.main([str(run_dir), str(models)])
    path = models / f"{run_dir.name}.safetensors"  # the run folder's name, not a shared one
    assert extra["path"] == str(path) and extra["run"] == run_dir.name == "run"
    other = export.main([str(run_dir), str(models), "--name", "second_run", "--dtype", "fp32"])
    assert other["path"] == str(models / "second_run.safetensors")
    assert sorted(p.name for p in models.iterdir()) == ["run.safetensors", "second_run.safetensors"]
    (entry,) = inspect_file(path, path.stem)
    assert entry.id == "run" and entry.trained
    assert entry.summary == extra["summary"] == model_card.summary(extra["model_card"])
    before = path.read_bytes()
    with pytest.raises(SystemExit) as exc:  # a second export of the same name collides
        export.main([str(run_dir), str(models)])
    assert exc.value.code == 2 and "exists already" in capsys.readouterr().err
    assert path.read_bytes() == before
    export.main([str(run_dir), str(models), "--overwrite", "--dtype", "fp32"])
    assert path.stat().st_size > len(before)  # replaced (fp32 is twice fp16)


def test_the_run_folders_own_snapshot_is_labelled_too(run_dir):
    from backend.models.entries import inspect_file

    path = run_dir / "teacher_backbone.safetensors"
    entry = inspect_file(path, path.stem)[0]
    assert entry.trained and entry.summary == (
        "vit_tiny/16 DINO run run, teacher after epoch 2 of 2, not evaluated "
        "(python -m trainer.export names the file and adds the model card)"
    )


def test_exported_and_saved_files_get_the_normal_file_mode(run_dir, tmp_path):
    export.export_run(run_dir, tmp_path / "m.safetensors")
    atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "c.pth")
    for path in (tmp_path / "m.safetensors", tmp_path / "c.pth"):
        assert stat.S_IMODE(path.stat().st_mode) == default_file_mode()  # not mkstemp's 0600


def _documented_commands() -> list[list[str]]:
    """The command lines of docs/TRAINING.md's local-model block, variables filled in."""
    text = (ROOT / "docs" / "TRAINING.md").read_text()
    block = text.split("## Training the local default model", 1)[1].split("```bash\n", 1)[1]
    lines = block.split("```", 1)[0].replace("\\\n", " ").splitlines()
    env = {}
    commands = []
    for line in (x.strip() for x in lines):
        if line.startswith(("RUN=", "EVALS=")):
            name, value = line.split("=", 1)
            env[name] = shlex.split(value)[0]
        elif line and not line.startswith("#"):
            for name in sorted(env, key=len, reverse=True):
                line = line.replace(f"${name}", env[name])
            commands.append(shlex.split(line))
    return commands


def test_the_documented_commands_parse_and_write_the_file_the_service_prefers():
    from backend.settings import SHIPPED_DEFAULT_ID
    from trainer.eval import knn, seg
    from trainer.train.config import parse_config

    parsers = {
        "trainer.eval.seg": seg.build_parser(),
        "trainer.eval.knn": knn.build_parser(),
        "trainer.export": export.build_parser(),
        "trainer.model_card": model_card.build_parser(),
    }
    seen = {}
    for cmd in _documented_commands():
        assert cmd[0] == "python", cmd
        if cmd[1] == "trainer/run.py":
            seen["train"] = parse_config(cmd[2:])
        else:
            assert cmd[1] == "-m" and cmd[2] in parsers, cmd
            seen.setdefault(cmd[2], []).append(parsers[cmd[2]].parse_args(cmd[3:]))
    assert seen["train"].config == "trainer/recipes/vits16_duts.yaml"
    assert len(seen["trainer.eval.seg"]) == 2 and len(seen["trainer.eval.knn"]) == 1
    exported = seen["trainer.export"][0]
    assert exported.out == Path(f"checkpoints/{SHIPPED_DEFAULT_ID}.safetensors")
    assert exported.dtype == "fp16" and exported.seg and exported.seg_random and exported.knn
    card = seen["trainer.model_card"][0]
    assert card.model == exported.out and card.out == Path("checkpoints/README.md")
    assert card.run_dir == exported.run_dir == Path(seen["train"].output_dir)


def test_the_recipes_are_plain_recipes():
    """They train for their epochs; a wall-clock budget is the user's --time_limit_minutes."""
    from trainer.train.config import parse_config

    gpu = parse_config(["--config", str(ROOT / "trainer/recipes/vits16_duts.yaml")])
    assert (gpu.arch, gpu.patch_size, gpu.precision, gpu.gpu_augment) == (
        "vit_small",
        16,
        "bf16",
        True,
    )
    assert (gpu.epochs, gpu.time_limit_minutes) == (100, 0)
    cpu = parse_config(["--config", str(ROOT / "trainer/recipes/vit_tiny_duts_cpu.yaml")])
    assert (cpu.arch, cpu.device, cpu.time_limit_minutes) == ("vit_tiny", "cpu", 0)
