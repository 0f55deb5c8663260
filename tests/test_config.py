"""TrainConfig and its CLI: official main_dino.py names and defaults, YAML, validation, help."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trainer.model.device import resolve_precision
from trainer.train.config import (
    bool_flag,
    build_parser,
    config_to_dict,
    make_config,
    parse_config,
)
from trainer.train.flags import TrainConfig

# The authors' main_dino.py defaults, written out independently of trainer/train/flags.py.
OFFICIAL_DEFAULTS = {
    "arch": "vit_small",
    "patch_size": 16,
    "out_dim": 65536,
    "norm_last_layer": True,
    "momentum_teacher": 0.996,
    "use_bn_in_head": False,
    "warmup_teacher_temp": 0.04,
    "teacher_temp": 0.04,
    "warmup_teacher_temp_epochs": 0,
    "weight_decay": 0.04,
    "weight_decay_end": 0.4,
    "clip_grad": 3.0,
    "batch_size_per_gpu": 64,
    "epochs": 100,
    "freeze_last_layer": 1,
    "lr": 0.0005,
    "warmup_epochs": 10,
    "min_lr": 1e-6,
    "optimizer": "adamw",
    "drop_path_rate": 0.1,
    "global_crops_scale": (0.4, 1.0),
    "local_crops_number": 8,
    "local_crops_scale": (0.05, 0.4),
    "output_dir": ".",
    "saveckp_freq": 20,
    "seed": 0,
    "num_workers": 10,
}
ADDED_DEFAULTS = {
    "device": "auto",
    "precision": "auto",
    "global_crops_size": 224,
    "local_crops_size": 96,
    "knn_every": 0,
    "knn_train_data": None,
    "knn_val_data": None,
    "probe_images": None,
    "config": None,
}


def _resolve(cfg, device_type, bf16_ok):
    return resolve_precision(cfg.precision, device_type, bf16_ok, cfg.use_fp16)


def test_official_flags_have_the_official_defaults():
    cfg = parse_config([])
    for name, value in {**OFFICIAL_DEFAULTS, **ADDED_DEFAULTS}.items():
        assert getattr(cfg, name) == value, name


def test_every_field_is_a_documented_flag():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in actions, f.name
        assert actions[f.name].help and len(actions[f.name].help) > 8, f"--{f.name} has no help"
    text = parser.format_help()
    for flag in (
        "--probe_images",
        "--knn_every",
        "--config",
        "--use_fp16",
        "--gpu_augment",
        "--log_every",
    ):
        assert flag in text


def test_official_command_line_parses():
    argv = [
        "--arch",
        "vit_base",
        "--patch_size",
        "8",
        "--out_dim",
        "1024",
        "--norm_last_layer",
        "false",
        "--use_bn_in_head",
        "True",
        "--use_fp16",
        "false",
        "--global_crops_scale",
        "0.25",
        "1",
        "--local_crops_scale",
        "0.05",
        "0.25",
        "--optimizer",
        "lars",
        "--epochs",
        "3",
        "--warmup_epochs",
        "1",
    ]
    cfg = parse_config(argv)
    assert (cfg.arch, cfg.patch_size, cfg.out_dim) == ("vit_base", 8, 1024)
    assert cfg.norm_last_layer is False and cfg.use_bn_in_head is True and cfg.use_fp16 is False
    assert cfg.global_crops_scale == (0.25, 1.0) and cfg.local_crops_scale == (0.05, 0.25)


@pytest.mark.parametrize(
    "word,value",
    [("true", True), ("On", True), ("1", True), ("False", False), ("off", False), ("0", False)],
)
def test_bool_flag_accepts_the_authors_words(word, value):
    assert bool_flag(word) is value


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--arch", "vit_huge"], "vit_tiny"),
        (["--optimizer", "adam"], "lars"),
        (["--precision", "fp8"], "bf16"),
        (["--device", "tpu"], "cuda"),
        (["--norm_last_layer", "maybe"], "true"),
        (["--global_crops_scale", "0.9", "0.1"], "min <= max"),
        (["--batch_size_per_gpu", "0"], "positive"),
        (["--knn_every", "2"], "--knn_train_data"),
        (["--patch_size", "32", "--local_crops_size", "16"], "larger than a crop"),
    ],
)
def test_bad_values_fail_at_once_naming_valid_choices(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_yaml_values_are_used_and_flags_override_them(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "arch: vit_tiny\nepochs: 7\nlocal_crops_scale: [0.1, 0.3]\nnorm_last_layer: false\n"
    )
    cfg = parse_config(["--config", str(path), "--epochs", "9"])
    assert cfg.arch == "vit_tiny" and cfg.epochs == 9 and cfg.local_crops_scale == (0.1, 0.3)
    assert cfg.norm_last_layer is False and cfg.config == str(path)


def test_yaml_unknown_key_and_bad_value_are_errors(tmp_path):
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("archh: vit_tiny\n")
    with pytest.raises(SystemExit, match="unknown keys.*archh.*valid keys"):
        parse_config(["--config", str(bad_key)])
    bad_value = tmp_path / "b.yaml"
    bad_value.write_text("optimizer: adam\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(bad_value)])


def test_precision_resolution():
    cfg = make_config()
    assert _resolve(cfg, "cuda", True) == "bf16"
    assert _resolve(cfg, "cuda", False) == "fp16"
    assert _resolve(cfg, "cpu", False) == "fp32"
    assert _resolve(make_config(use_fp16=True), "cuda", True) == "fp16"
    assert _resolve(make_config(use_fp16=False), "cuda", True) == "fp32"
    assert _resolve(make_config(use_fp16=True, precision="bf16"), "cuda", True) == "bf16"


def test_args_dict_is_plain_and_loads_weights_only(tmp_path):
    args = config_to_dict(make_config(knn_k=[10, 20]))
    assert type(args) is dict
    assert all(isinstance(v, (str, int, float, bool, list, type(None))) for v in args.values())
    torch.save({"args": args}, tmp_path / "a.pth")
    assert torch.load(tmp_path / "a.pth", weights_only=True)["args"] == args
