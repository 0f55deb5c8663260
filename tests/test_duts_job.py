"""The shipped-model job end to end on tiny generated data: stage, unpack, run, ship."""

from __future__ import annotations

import json
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_data import make_image_folder
from trainer import duts_job
from trainer.model.checkpoint import load_backbone, read_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_RECIPE = """
arch: vit_tiny
patch_size: 16
epochs: 2
time_limit_minutes: 30
batch_size_per_gpu: 4
global_crops_size: 32
local_crops_size: 16
local_crops_number: 1
out_dim: 32
warmup_epochs: 1
precision: fp32
device: cpu
num_workers: 0
log_every: 1
saveckp_freq: 0
probe_size: 32
"""


def _tar(archive, folder, arcname):
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=arcname)


def _shared_data(root):
    """Tiny stand-ins for ../shared/data's archives, with the same layouts."""
    rng = np.random.default_rng(0)
    src = root / "src"
    for part in range(3):
        make_image_folder(src / f"tr{part}", {"": 5}, size=(40, 48), seed=part)
        for p in (src / f"tr{part}").iterdir():
            p.rename(p.with_name(f"p{part}_{p.name}"))
        _tar(root / duts_job.DUTS_PARTS[part], src / f"tr{part}", "duts-tr-192")
    te = src / "te"
    make_image_folder(te / "images", {"": 3}, size=(40, 40))
    (te / "masks").mkdir()
    for p in (te / "images").iterdir():
        Image.fromarray((rng.random((40, 40)) > 0.5).astype(np.uint8) * 255).save(te / "masks" / f"{p.stem}.png")
    _tar(root / "duts-te-1k.tar.gz", te, "duts-te-1k")
    make_image_folder(src / "cifar" / "train", {"cat": 3, "dog": 3}, size=(32, 32))
    make_image_folder(src / "cifar" / "test", {"cat": 2, "dog": 2}, size=(32, 32), seed=1)
    _tar(root / "cifar10-jpg.tar.gz", src / "cifar", "cifar10")
    return root


def test_prepare_unpack_run_ship(tmp_path, monkeypatch):
    shared = _shared_data(tmp_path / "shared")
    stage, work = tmp_path / "stage", tmp_path / "work"
    sizes = duts_job.prepare(shared, stage, knn_per_class=2)
    assert sorted(sizes) == ["c1", "c2", "c3"]
    assert sorted(p.name for p in (stage / "c1").iterdir()) == ["duts-te-1k-a.tar.gz", duts_job.DUTS_PARTS[0]]
    for name in ("c1", "c2", "c3"):
        duts_job.unpack(stage / name, work)
    assert len(list((work / "duts-te-1k" / "images").iterdir())) == 3  # both halves, images with their masks
    assert len(list((work / "duts-te-1k" / "masks").iterdir())) == 3
    assert len(list((work / "duts-tr-192").iterdir())) == 15
    assert sorted(p.name for p in (work / "cifar-knn").iterdir()) == ["train", "val"]
    assert len(list((work / "cifar-knn" / "train" / "cat").iterdir())) == 2  # knn_per_class

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    monkeypatch.setitem(duts_job.PROFILES, "test", duts_job.Profile(str(recipe), 12, 2, None, probe_images=2))
    out = tmp_path / "out"
    results = duts_job.run_job("test", out, work)

    assert len(list((work / "probes").iterdir())) == 2  # held back from training ...
    assert len(list((work / "duts-tr-192").iterdir())) == 13
    assert results["train"]["images"] == 12 and results["train"]["epochs"] == 2  # ... and the subset trained on
    jac = results["jaccard"]
    assert jac["trained"]["images"] == 2 and len(jac["trained"]["per_head_jaccard"]) == 3
    assert 0 <= jac["random_init"]["jaccard"] <= 100
    assert set(results["knn"]["trained"]) == {"k20_top1", "k20_top5"} and results["knn"]["val_images"] == 4
    assert (out / "heads_emerging.png").exists() and (out / "train_log.txt").exists()
    assert json.loads((out / "results.json").read_text())["model"]["sha256"] == results["model"]["sha256"]
    _check_device_return_limits(out)
    assert (work / "preflight" / "joined.safetensors").exists()  # the preflight ran every post-training step

    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- shipped-model:start -->\nNot trained yet.\n<!-- shipped-model:end -->\n\nrest\n")
    with pytest.raises(ValueError, match="not a GPU"):
        duts_job.ship(out, tmp_path / "ckpt", tmp_path / "img" / "pic.png", readme=readme)
    shipped = duts_job.ship(out, tmp_path / "ckpt", tmp_path / "img" / "pic.png", allow_cpu=True, readme=readme)
    state, info = read_backbone(shipped)
    assert info.extra["summary"] == results["summary"] and "DUTS-TE mask Jaccard" in info.extra["summary"]
    with torch.no_grad():
        model, _ = load_backbone(shipped)
        fp32, _ = load_backbone(work / "run_test" / "teacher_backbone.safetensors")
    for key, value in fp32.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value.half().float(), rtol=0, atol=0)
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert results["model"]["sha256"] in card and f"{jac['trained']['jaccard']:.1f}" in card
    assert (tmp_path / "img" / "pic.png").exists()
    text = readme.read_text()
    assert "Not trained yet" not in text and results["summary"] in text and "](img/pic.png)" in text
    assert text.startswith("# x\n") and text.endswith("<!-- shipped-model:end -->\n\nrest\n")


def _check_device_return_limits(out):
    """What the device tool brings back: at most 8 files of at most 16 MiB, plain names, no folders."""
    files = list(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in files)
    assert all(f.stat().st_size <= 16 * 2**20 for f in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files)


def _tiny_work(tmp_path, monkeypatch):
    shared = _shared_data(tmp_path / "shared")
    work = tmp_path / "work"
    duts_job.prepare(shared, tmp_path / "stage", knn_per_class=2)
    for name in ("c1", "c2", "c3"):
        duts_job.unpack(tmp_path / "stage" / name, work)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    monkeypatch.setitem(duts_job.PROFILES, "test", duts_job.Profile(str(recipe), 12, 2, None, probe_images=2))
    return work


def test_a_failed_evaluation_keeps_the_model_and_a_retry_does_not_train_again(tmp_path, monkeypatch):
    import trainer.eval.seg

    work = _tiny_work(tmp_path, monkeypatch)
    real, calls = trainer.eval.seg.evaluate_folder, []

    def fails_after_the_preflight(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # the preflight's two calls pass; the real evaluation breaks
            raise RuntimeError("simulated evaluation failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer.eval.seg, "evaluate_folder", fails_after_the_preflight)
    out = tmp_path / "out"
    results = duts_job.run_job("test", out, work)
    assert results["jaccard"]["trained"] == {"error": "RuntimeError: simulated evaluation failure"}
    assert "Jaccard not measured" in results["summary"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["train"]["epochs"] == 2 and saved["model"]["parts"]  # the model and its figures came back
    _check_device_return_limits(out)
    log_lines = (work / "run_test" / "log.txt").read_text()

    monkeypatch.setattr(trainer.eval.seg, "evaluate_folder", real)
    again = duts_job.run_job("test", out, work)  # the retried call only evaluates
    assert (work / "run_test" / "log.txt").read_text() == log_lines
    assert "error" not in again["jaccard"]["trained"] and again["train"] == results["train"]


def test_the_gpu_profile_refuses_a_cpu_and_an_incomplete_training_set(tmp_path, monkeypatch):
    monkeypatch.setattr(duts_job.torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*--profile cpu_tiny"):
        duts_job.run_job("h100", tmp_path / "out", tmp_path)
    (tmp_path / "duts-tr-192").mkdir()
    make_image_folder(tmp_path / "duts-tr-192", {"": 3})
    (tmp_path / ".unpacked").mkdir()
    (tmp_path / ".unpacked" / duts_job.DUTS_PARTS[0]).touch()
    with pytest.raises(FileNotFoundError, match=r"3 training photos.*at least 10500.*unpacked so far: "
                                                r"duts-tr-192-part1.tar.gz"):
        duts_job.check_training_set(tmp_path / "duts-tr-192", tmp_path, duts_job.PROFILES["h100"])


def test_unpack_without_archives_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .tar.gz archives"):
        duts_job.unpack(tmp_path, tmp_path / "work")


def test_prepare_refuses_a_call_over_the_transfer_limit(tmp_path):
    shared = _shared_data(tmp_path / "shared")
    with pytest.raises(ValueError, match="at most 0 MiB.*too big"):
        duts_job.prepare(shared, tmp_path / "stage", knn_per_class=2, call_limit_bytes=1000, tree_bytes=10)
    assert duts_job.tracked_bytes() < 8 * 2**20  # the repository itself leaves room for a 42 MiB part


def test_prepare_lists_missing_archives(tmp_path):
    with pytest.raises(FileNotFoundError, match="duts-tr-192-part1.tar.gz"):
        duts_job.prepare(tmp_path, tmp_path / "stage")


def test_the_job_writes_the_file_the_service_prefers_as_its_offline_default():
    from backend.settings import SHIPPED_DEFAULT_ID

    assert duts_job.MODEL_FILE == f"{SHIPPED_DEFAULT_ID}.safetensors"
    assert duts_job.PROFILES["h100"].model_file == duts_job.MODEL_FILE
    assert duts_job.PROFILES["cpu_tiny"].model_file != duts_job.MODEL_FILE  # a rehearsal never takes its place


def test_recipes_parse_and_fit_the_documented_budget():
    from trainer.train.config import parse_config

    gpu = parse_config(["--config", str(duts_job.ROOT / duts_job.PROFILES["h100"].recipe)])
    assert (gpu.arch, gpu.patch_size, gpu.precision, gpu.gpu_augment) == ("vit_small", 16, "bf16", True)
    assert 0 < gpu.time_limit_minutes <= 7  # leaves room for evaluation in one 10-minute device call
    h100 = duts_job.PROFILES["h100"]
    assert h100.deadline_minutes + 0.5 <= 10 and h100.eval_reserve_minutes >= 2
    cpu = parse_config(["--config", str(duts_job.ROOT / duts_job.PROFILES["cpu_tiny"].recipe)])
    assert (cpu.arch, cpu.device) == ("vit_tiny", "cpu")


def test_the_repository_readme_has_the_block_that_ship_fills():
    from trainer.model_card import replace_readme_block

    text = (duts_job.ROOT / "README.md").read_text()
    assert replace_readme_block(text, "FILLED\n").count("FILLED") == 1


def test_the_training_budget_leaves_the_evaluation_its_time_before_the_deadline(monkeypatch):
    import time

    profile = duts_job.Profile("r.yaml", None, None, None, deadline_minutes=9.0, eval_reserve_minutes=2.5)
    monkeypatch.setattr(duts_job, "PROCESS_START", time.monotonic() - 60)  # 1 min since the job started
    assert duts_job._budget_minutes(7.0, profile, None) == pytest.approx(5.5, abs=0.01)  # 9 - 1 - 2.5 < 7
    assert duts_job._budget_minutes(3.0, profile, None) == pytest.approx(3.0)  # the recipe's own limit is lower
    monkeypatch.setattr(duts_job, "PROCESS_START", time.monotonic() - 5 * 60)
    assert duts_job._budget_minutes(7.0, profile, None) == pytest.approx(1.5, abs=0.01)
    assert duts_job._budget_minutes(7.0, duts_job.Profile("r.yaml", None, None, None), 0.5) == 0.5  # no deadline
    monkeypatch.setattr(duts_job, "PROCESS_START", time.monotonic() - 6 * 60)
    with pytest.raises(RuntimeError, match="min left for training"):
        duts_job._budget_minutes(7.0, profile, None)
