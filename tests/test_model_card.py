"""``python -m trainer.model_card``: figures read from a run's files, the Markdown card, the
README block, and the whole chain train -> evaluate -> export -> card on a tiny real run."""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from tests.tiny_run import make_masked_images, seg_result, train_tiny_run
from trainer import export, model_card
from trainer.model.checkpoint import read_backbone

ROOT = Path(__file__).resolve().parents[1]
ARGS = {
    "arch": "vit_small",
    "patch_size": 16,
    "epochs": 100,
    "batch_size_per_gpu": 128,
    "precision": "bf16",
    "out_dim": 16384,
    "time_limit_minutes": 7.0,
    "data_path": "/data/DUTS-TR/",
    "config": "trainer/recipes/vits16_duts.yaml",
}
SEG = seg_result(44.44, [30.0, 41.5, 12.25], [50, 140, 10])
SEG_RANDOM = seg_result(20.7, [15.0, 16.0, 14.5], [70, 60, 70])
KNN = {
    "train_data": "cifar/train",
    "val_data": "cifar/val",
    "resize": 224,
    "crop": 224,
    "temperature": 0.07,
    "k20_top1": 61.234,
    "k20_top5": 90.0,
    "k10_top1": 60.5,
    "k10_top5": 89.0,
}


def _fake_run(folder: Path, rates: list[tuple[int, float]]) -> Path:
    """A run folder with the files the card reads; ``rates`` are (epoch, img/s) log steps."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"args": ARGS, "epoch": 3}, folder / "checkpoint.pth")
    lines = [
        {"train_loss": 9.0 - e, "train_teacher_entropy": 5.0 + e, "epoch": e} for e in range(3)
    ]
    (folder / "log.txt").write_text("".join(json.dumps(x) + "\n" for x in lines))
    steps = [
        {"epoch": e, "iter": i % 4, "loss": 1.0, "img_per_s": r} for i, (e, r) in enumerate(rates)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in steps))
    return folder


def test_the_training_figures_come_from_the_run_files(tmp_path):
    rates = [(0, 5.0), (0, 900.0), (0, 910.0), (0, 920.0), (1, 1000.0), (1, 1200.0), (2, 1100.0)]
    run = _fake_run(tmp_path / "run", rates)
    card = model_card.collect(run)
    train = card["train"]
    assert train["epochs"] == 3 and train["planned_epochs"] == 100
    assert train["steps_per_epoch"] == 4  # iters 0..3 logged in epoch 0
    assert train["img_per_s"] == statistics.median([1000.0, 1200.0, 1100.0])  # epoch 0 left out
    assert train["final_loss"] == 7.0 and train["teacher_entropy"] == 7.0
    assert train["log_out_dim"] == pytest.approx(math.log(16384))
    assert (card["arch_label"], card["dataset"], card["recipe"]) == (
        "ViT-S/16",
        "DUTS-TR",
        "trainer/recipes/vits16_duts.yaml",
    )
    only_first = model_card.collect(_fake_run(tmp_path / "r1", [(0, 5.0), (0, 7.0), (0, 9.0)]))
    assert only_first["train"]["img_per_s"] == 7.0  # a one-epoch run keeps its own rates


def test_the_card_renders_every_figure(tmp_path):
    run = _fake_run(tmp_path / "run", [(0, 10.0), (1, 1000.0)])
    for name, value in (("seg", SEG), ("rnd", SEG_RANDOM), ("knn", KNN)):
        (tmp_path / f"{name}.json").write_text(json.dumps(value))
    card = model_card.collect(
        run,
        tmp_path / "seg.json",
        tmp_path / "rnd.json",
        tmp_path / "knn.json",
        hardware="1x H100 80GB",
    )
    model = tmp_path / "dino_vits16_duts.safetensors"
    from trainer.model.checkpoint import export_backbone_safetensors
    from trainer.model.vit import build_vit

    export_backbone_safetensors(
        build_vit("vit_tiny", 16), model, "vit_tiny", 3, dtype=torch.float16
    )
    facts = model_card.model_file_facts(model)
    assert facts == {
        "file": model.name,
        "bytes": model.stat().st_size,
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "dtype": "float16",
    }
    text = model_card.render(card, facts)
    assert text.startswith(
        f"# {model.name}\n\nViT-S/16 pretrained with DINO on DUTS-TR (3 epochs on "
        "1x H100 80GB); mask Jaccard 44.4 vs 20.7 at random init.\n"
    )
    assert "**44.4** trained vs 20.7 for the same architecture" in text
    assert "| 1 | 41.5 | 140 images | 16.0 |" in text and "| 2 | 12.2 | 10 images | 14.5 |" in text
    assert "k=10: **60.50%**, k=20: **61.23%**" in text
    assert "- 3 epochs of 1 steps (planned 100, fitted to a 7-minute budget)." in text
    assert "Throughput: 1000 img/s" in text and "Hardware: 1x H100 80GB" in text
    assert "loss 7.000, teacher entropy 7.00 (uniform: 9.70)" in text
    assert facts["sha256"] in text and f"{facts['bytes']:,} bytes" in text


def test_missing_evaluations_are_said_to_be_missing(tmp_path):
    card = model_card.collect(_fake_run(tmp_path / "run", []))
    assert model_card.summary(card).endswith("(3 epochs); mask Jaccard not measured")
    facts = {"file": "m.safetensors", "dtype": "float16", "bytes": 10, "sha256": "ab"}
    text = model_card.render(card, facts)
    assert text.count("Not measured") == 4 and "Throughput" not in text


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.pth does not exist: RUN_DIR must be"):
        model_card.collect(tmp_path)
    run = _fake_run(tmp_path / "run", [])
    (run / "log.txt").write_text("")
    with pytest.raises(ValueError, match="log.txt holds no finished epoch"):
        model_card.collect(run)


def test_the_command_line_names_a_missing_input(tmp_path, capsys):
    run = _fake_run(tmp_path / "run", [])
    argv = [str(run), "--model", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "c.md")]
    for extra, message in (
        ([], "m.safetensors"),
        (["--seg", str(tmp_path / "nope.json")], "nope.json"),
    ):
        with pytest.raises(SystemExit) as exc:
            model_card.main(argv + extra)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "c.md").exists()


def test_the_readme_block_is_replaced_and_nothing_else():
    start, end = model_card.README_START, model_card.README_END
    readme = f"# x\n\n{start}\nNot trained yet.\n{end}\n\nrest\n"
    out = model_card.replace_readme_block(readme, "FILLED\n")
    assert out == f"# x\n\n{start}\nFILLED\n{end}\n\nrest\n"
    with pytest.raises(ValueError, match="no <!-- shipped-model:start -->"):
        model_card.replace_readme_block("# no markers\n", "FILLED\n")
    text = (ROOT / "README.md").read_text()  # the repository's README has the block to fill
    assert model_card.replace_readme_block(text, "FILLED\n").count("FILLED") == 1


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_train_evaluate_export_and_render_the_card(tmp_path):
    """The documented chain, each step through its command line, on a two-epoch tiny run."""
    from tests.test_data import make_image_folder
    from trainer.eval import knn, seg

    run = train_tiny_run(tmp_path)
    images, masks = make_masked_images(tmp_path / "te")
    common = [
        "--images",
        str(images),
        "--masks",
        str(masks),
        "--image_size",
        "64",
        "--device",
        "cpu",
    ]
    seg.main(
        ["--checkpoint", str(run / "checkpoint.pth"), *common, "--json", str(tmp_path / "s.json")]
    )
    seg.main(["--random_init", "--arch", "vit_tiny", *common, "--json", str(tmp_path / "r.json")])
    make_image_folder(tmp_path / "bank", {"cat": 3, "dog": 3}, size=(32, 32))
    make_image_folder(tmp_path / "val", {"cat": 2, "dog": 2}, size=(32, 32), seed=1)
    knn.main(
        [
            "--checkpoint",
            str(run / "checkpoint.pth"),
            "--train_data",
            str(tmp_path / "bank"),
            "--val_data",
            str(tmp_path / "val"),
            "--resize",
            "32",
            "--crop",
            "32",
            "--nb_knn",
            "2",
            "--num_workers",
            "0",
            "--device",
            "cpu",
            "--json",
            str(tmp_path / "k.json"),
        ]
    )
    evals = [
        "--seg",
        str(tmp_path / "s.json"),
        "--seg_random",
        str(tmp_path / "r.json"),
        "--knn",
        str(tmp_path / "k.json"),
        "--dataset",
        "DUTS-TR",
    ]
    model = tmp_path / "ckpt" / "dino_vits16_duts.safetensors"
    export.main([str(run), str(model), "--dtype", "fp16", *evals])
    readme = tmp_path / "README.md"
    readme.write_text(
        "# x\n\n<!-- shipped-model:start -->\nNot trained yet.\n<!-- shipped-model:end -->\n"
    )
    text = model_card.main(
        [
            str(run),
            "--model",
            str(model),
            "--out",
            str(tmp_path / "ckpt" / "README.md"),
            *evals,
            "--readme",
            str(readme),
            "--picture",
            "img/heads.png",
        ]
    )

    seg_json, knn_json = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("s", "k"))
    assert seg_json["images"] == 3 and len(seg_json["per_head_jaccard"]) == 3  # ViT-Ti: 3 heads
    assert set(knn_json) >= {"k2_top1", "k2_top5", "resize", "val_data"}
    _, info = read_backbone(model)
    summary = info.extra["summary"]
    assert summary.startswith("ViT-Ti/16 pretrained with DINO on DUTS-TR (2 epochs); mask Jaccard ")
    assert f"{seg_json['jaccard']:.1f}" in summary
    assert (tmp_path / "ckpt" / "README.md").read_text() == text
    assert summary + "." in text and hashlib.sha256(model.read_bytes()).hexdigest() in text
    assert f"k=2: **{knn_json['k2_top1']:.2f}%**" in text
    filled = readme.read_text()
    assert "Not trained yet" not in filled and summary in filled
    assert "[ckpt/README.md](ckpt/README.md)" in filled and "](img/heads.png)" in filled


def test_linear_and_davis_rows_come_from_their_results(tmp_path):
    run = _fake_run(tmp_path / "run", [(0, 10.0)])
    (tmp_path / "linear.json").write_text(json.dumps({"top1": 71.234, "top5": 90.5}))
    davis = {"mean": {"J": 0.58, "F": 0.62, "JF": 0.6}, "sequences": {"a": {}, "b": {}}}
    (tmp_path / "davis.json").write_text(json.dumps(davis))
    card = model_card.collect(run, linear=tmp_path / "linear.json", davis=tmp_path / "davis.json")
    text = "\n".join(model_card._linear_lines(card) + model_card._davis_lines(card))
    assert "top-1 **71.23%**, top-5 90.50%" in text
    assert "on 2 sequences: J&F **60.0**, J 58.0, F 62.0" in text
    empty = model_card.collect(run)
    assert "Not measured" in model_card._linear_lines(empty)[0]
    assert "Not measured" in model_card._davis_lines(empty)[0]
