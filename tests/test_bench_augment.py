"""benchmarks.augment_throughput on three generated photos: both run, every figure shown."""

from __future__ import annotations

import json

import torch

from benchmarks import augment_throughput
from trainer.data.augment import JITTER_OPS

ARGS = ["--images", "3", "--generated_size", "120", "90", "--rounds", "1"]


def test_reports_throughput_speedup_and_per_op_profile(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "report.json"
    report = augment_throughput.main([*ARGS, "--json", str(out)])
    printed = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the one-thread setting is undone
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["images"] == 3 and report["views"] == "2x224 + 8x96" and report["threads"] == 1
    assert report["paper_images_per_s"] > 0 and report["ours_images_per_s"] > 0
    assert report["speedup"] == report["ours_images_per_s"] / report["paper_images_per_s"]
    paper, ours = report["profile_ms"]["paper"], report["profile_ms"]["ours"]
    assert list(paper) == list(augment_throughput.PAPER_OPS)
    assert list(ours) == [*augment_throughput.PAPER_OPS, *(f"jitter.{op}" for op in JITTER_OPS)]
    for op in (
        "decode",
        "crop",
        "blur",
        "to_tensor",
    ):  # every image has these (global 1 is always blurred)
        assert paper[op] > 0 and ours[op] > 0, op
    assert all(value >= 0 for value in [*paper.values(), *ours.values()])
    for text in ("images/s", "speed-up", "per-op profile", "jitter.hue", "generated 120x90 photos"):
        assert text in printed


def test_reads_photos_from_a_folder(tmp_path, capsys):
    folder = tmp_path / "photos" / "class"
    folder.mkdir(parents=True)
    for index, blob in enumerate(augment_throughput.generated_photos(2, (80, 60), seed=1)):
        (folder / f"{index}.jpg").write_bytes(blob)
    report = augment_throughput.main(
        [
            "--data_path",
            str(tmp_path / "photos"),
            "--images",
            "5",
            "--rounds",
            "1",
            "--local_crops_number",
            "2",
            "--global_crops_size",
            "32",
            "--local_crops_size",
            "16",
        ]
    )
    assert report["images"] == 2 and report["views"] == "2x32 + 2x16"
    assert report["source"] == str(tmp_path / "photos") and report["speedup"] > 0
    assert str(tmp_path / "photos") in capsys.readouterr().out
