"""The whole job behind the shipped default model: unpack, train, export, evaluate, package.

A GPU machine returns at most 16 MiB per file and receives at most 64 MiB per call, so the
job runs in steps (see docs/TRAINING.md, "The shipped model"):

1. here, once:  ``python -m trainer.duts_job prepare``
   stages ``.data/gpu/{c1,c2,c3}`` (git-ignored, one carry each, under the 64 MiB per call): a
   DUTS-TR part each, with half of DUTS-TE in c1 and c2 and a CIFAR-10 k-NN subset in c3;
2. on the GPU machine, three calls back to back (it stays warm for 30 s between calls):
   ``python3 -m trainer.duts_job unpack .data/gpu/c1`` (carry ``.data/gpu/c1``), then c2, then
   ``python3 -m trainer.duts_job unpack .data/gpu/c3 && python3 -m trainer.duts_job run``
   (carry ``.data/gpu/c3``, timeout 600): trains with ``trainer/recipes/vits16_duts.yaml``
   under its time budget, evaluates, and writes the fp16 model in parts plus ``results.json``,
   the probe grid and the training log to ``$OUT``;
3. here: ``python -m trainer.duts_job ship FILES_DIR`` joins and checks the model, writes
   ``checkpoints/dino_vits16_duts.safetensors``, ``checkpoints/README.md`` (the model card) and
   ``docs/img/heads_emerging.png``.

``run --profile cpu_tiny`` rehearses step 2 on a CPU in minutes (ViT-tiny, a few hundred
images); ``ship`` refuses a model that was not trained on a GPU unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.data.dataset import IMAGE_SUFFIXES
from trainer.file_parts import find_parts, join_parts, sha256_file, split_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
STAGE = ROOT / ".data" / "gpu"
WORK = ROOT / ".data" / "gpu_work"
MODEL_FILE = "dino_vits16_duts.safetensors"
DUTS_PARTS = ("duts-tr-192-part1.tar.gz", "duts-tr-192-part2.tar.gz", "duts-tr-192-part3.tar.gz")
logger = logging.getLogger("trainer.duts_job")
PROCESS_START = time.monotonic()
CALL_LIMIT_BYTES = 62 * 2**20  # the device tool's 64 MiB per call, less a margin


@dataclass(frozen=True)
class Profile:
    """What one kind of run uses: recipe, data limits and evaluation sizes."""

    recipe: str
    max_train_images: int | None
    eval_images: int | None
    knn_per_class: int | None
    probe_images: int = 4
    model_file: str = MODEL_FILE
    requires_cuda: bool = False
    min_train_images: int | None = None
    min_eval_images: int | None = None
    deadline_minutes: float | None = None  # the whole run step must end by then (the device call's limit)
    eval_reserve_minutes: float = 0.0  # kept free after training for evaluation and packaging


PROFILES = {
    "h100": Profile("trainer/recipes/vits16_duts.yaml", None, None, None, requires_cuda=True,
                    min_train_images=10_500, min_eval_images=1000, deadline_minutes=9.0, eval_reserve_minutes=2.5),
    "cpu_tiny": Profile("trainer/recipes/vit_tiny_duts_cpu.yaml", 400, 40, 20, probe_images=2,
                        model_file="dino_vitti16_duts_cpu_rehearsal.safetensors"),
}


# -- step 1: stage the data here -----------------------------------------------------------
def _cifar_subset(archive: Path, dest: Path, per_class: int) -> int:
    """A tar.gz of ``cifar-knn/{train,val}/<class>/*.jpg``: ``per_class`` train images, all test."""
    taken: dict[str, int] = {}
    count = 0
    with tarfile.open(archive) as src, tarfile.open(dest, "w:gz") as out:
        for member in src:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in ("train", "test"):
                continue
            split, label = ("train" if parts[-3] == "train" else "val"), parts[-2]
            key = f"{split}/{label}"
            if split == "train" and taken.get(key, 0) >= per_class:
                continue
            taken[key] = taken.get(key, 0) + 1
            member.name = f"cifar-knn/{split}/{label}/{parts[-1]}"
            out.addfile(member, src.extractfile(member))
            count += 1
    return count


def _split_pairs_archive(archive: Path, dest_a: Path, dest_b: Path) -> tuple[int, int]:
    """Split DUTS-TE into two tar.gz halves by image id (each image stays with its mask)."""
    with tarfile.open(archive) as src:
        members = [m for m in src.getmembers() if m.isfile()]
        ids = sorted({Path(m.name).stem for m in members})
        first = set(ids[: len(ids) // 2])
        with tarfile.open(dest_a, "w:gz") as a, tarfile.open(dest_b, "w:gz") as b:
            for m in members:
                (a if Path(m.name).stem in first else b).addfile(m, src.extractfile(m))
    return len(first), len(ids) - len(first)


def tracked_bytes(root: Path = ROOT) -> int:
    """Size of the files git tracks (what travels to the device besides the carried folders)."""
    import subprocess

    names = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return sum((root / n).stat().st_size for n in names.decode().split("\0") if n and (root / n).is_file())


def prepare(shared: Path = SHARED, stage: Path = STAGE, knn_per_class: int = 1000,
            call_limit_bytes: int = CALL_LIMIT_BYTES, tree_bytes: int | None = None) -> dict[str, int]:
    """Stage one folder per device call, ``stage/c1..c3``: a DUTS-TR part each, plus half of
    DUTS-TE (c1, c2) or the CIFAR-10 k-NN subset (c3); returns bytes per folder."""
    missing = [n for n in (*DUTS_PARTS, "duts-te-1k.tar.gz", "cifar10-jpg.tar.gz") if not (shared / n).exists()]
    if missing:
        raise FileNotFoundError(f"missing in {shared}: {', '.join(missing)}")
    shutil.rmtree(stage, ignore_errors=True)
    calls = [stage / f"c{i}" for i in (1, 2, 3)]
    for folder, name in zip(calls, DUTS_PARTS, strict=True):
        folder.mkdir(parents=True)
        shutil.copyfile(shared / name, folder / name)
    halves = _split_pairs_archive(shared / "duts-te-1k.tar.gz", calls[0] / "duts-te-1k-a.tar.gz",
                                  calls[1] / "duts-te-1k-b.tar.gz")
    n = _cifar_subset(shared / "cifar10-jpg.tar.gz", calls[2] / "cifar-knn.tar.gz", knn_per_class)
    logger.info("DUTS-TE halves: %d + %d images; CIFAR-10 k-NN subset: %d images (%d per class in the bank, "
                "the whole test set)", *halves, n, knn_per_class)
    sizes = {f.name: sum(p.stat().st_size for p in f.iterdir()) for f in calls}
    tree = tracked_bytes() if tree_bytes is None else tree_bytes
    too_big = {k: v for k, v in sizes.items() if v + tree > call_limit_bytes}
    if too_big:
        raise ValueError(f"a device call carries at most {call_limit_bytes / 2**20:.0f} MiB with the working tree "
                         f"({tree / 2**20:.1f} MiB): too big: {too_big}")
    return sizes


# -- step 2a: unpack on the GPU machine ------------------------------------------------------
def unpack(folder: Path, work: Path = WORK) -> list[str]:
    """Extract every ``*.tar.gz`` in ``folder`` into ``work`` (safe member filter)."""
    archives = sorted(Path(folder).glob("*.tar.gz"))
    if not archives:
        raise FileNotFoundError(f"no .tar.gz archives in {folder}; was it carried?")
    work.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        with tarfile.open(archive) as tar:
            tar.extractall(work, filter="data")
        (work / ".unpacked").mkdir(exist_ok=True)
        (work / ".unpacked" / archive.name).touch()
        logger.info("unpacked %s into %s", archive.name, work)
    train = work / "duts-tr-192"
    if train.is_dir():
        logger.info("%d training photos so far in %s", sum(1 for _ in train.iterdir()), train)
    return [a.name for a in archives]


def hold_back_probes(train_dir: Path, probe_dir: Path, count: int) -> list[Path]:
    """Move ``count`` evenly spaced photos out of the training set (once) to probe the heads."""
    if probe_dir.is_dir() and any(probe_dir.iterdir()):
        return sorted(probe_dir.iterdir())
    images = sorted(p for p in train_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(images) < count + 1:
        raise FileNotFoundError(f"{train_dir} holds {len(images)} images; unpack the DUTS-TR parts first")
    probe_dir.mkdir(parents=True, exist_ok=True)
    step = len(images) // count
    moved = [Path(shutil.move(str(images[i * step + step // 2]), probe_dir)) for i in range(count)]
    return moved


def train_subset(train_dir: Path, limit: int | None, work: Path) -> Path:
    """``train_dir`` itself, or a folder with copies of its first ``limit`` images."""
    if limit is None:
        return train_dir
    subset = work / f"train_first{limit}"
    if not subset.is_dir():
        _copy_first(train_dir, subset, limit)
    return subset


def _copy_first(folder: Path, dest: Path, count: int) -> None:
    """Copy the first ``count`` files of ``folder`` (by name) into a new folder ``dest``."""
    dest.mkdir(parents=True)
    for path in sorted(p for p in folder.iterdir() if p.is_file())[:count]:
        shutil.copyfile(path, dest / path.name)


# -- step 2b: train, evaluate and package ------------------------------------------------------
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def _train(cfg_args: list[str], device: torch.device) -> tuple[Any, int, float, float | None]:
    """Train in this process; (config, planned epochs, minutes, peak GPU memory in GB or None)."""
    from trainer.run import train
    from trainer.train.config import parse_config

    cfg = parse_config(cfg_args)
    planned = cfg.epochs
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    train(cfg)
    minutes = (time.perf_counter() - started) / 60
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return cfg, planned, minutes, peak


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_figures(run_dir: Path, cfg: Any, planned: int, images: int, minutes: float,
                  peak_gb: float | None) -> dict[str, Any]:
    """The training figures of the model card, from the run's log.txt and metrics.jsonl."""
    epochs = _read_jsonl(run_dir / "log.txt")
    steps = _read_jsonl(run_dir / "metrics.jsonl")
    warm = [s["img_per_s"] for s in steps if s.get("epoch", 0) >= 1 and s.get("img_per_s")]
    rates = warm or [s["img_per_s"] for s in steps if s.get("img_per_s")]
    last = epochs[-1]
    return {
        "images": images, "epochs": len(epochs), "planned_epochs": planned,
        "steps_per_epoch": images // cfg.batch_size_per_gpu, "time_limit_minutes": cfg.time_limit_minutes,
        "minutes": round(minutes, 2), "img_per_s": float(sorted(rates)[len(rates) // 2]) if rates else 0.0,
        "peak_memory_gb": None if peak_gb is None else round(peak_gb, 2), "precision": cfg.precision,
        "final_loss": last["train_loss"], "teacher_entropy": last.get("train_teacher_entropy", float("nan")),
        "log_out_dim": math.log(cfg.out_dim),
    }


def _evaluate(model_path: Path, arch: str, patch: int, work: Path, profile: Profile, device: torch.device,
              strict: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Jaccard on DUTS-TE and k-NN on CIFAR-10, trained and at random init (seed 0).

    A failing evaluation becomes ``{"error": ...}`` in the results (``strict`` raises instead).
    """
    from trainer.eval.seg import evaluate_folder
    from trainer.model.checkpoint import load_backbone
    from trainer.model.vit import build_vit

    trained, _ = load_backbone(model_path)
    torch.manual_seed(0)
    models = {"trained": trained.to(device).eval(), "random_init": build_vit(arch, patch).to(device).eval()}
    duts = work / "duts-te-1k"
    guard = (lambda what, fn: fn()) if strict else _safely
    jaccard = {k: guard(f"Jaccard ({k})", lambda m=m: evaluate_folder(
        m, duts / "images", duts / "masks", limit=profile.eval_images, device=device)) for k, m in models.items()}
    knn = guard("k-NN", lambda: _knn(models, work / "cifar-knn", profile, device))
    return jaccard, knn


def _knn(models: dict[str, torch.nn.Module], root: Path, profile: Profile,
         device: torch.device) -> dict[str, Any] | None:
    from trainer.eval.knn import knn_evaluate

    if not (root / "train").is_dir():
        logger.warning("no %s: k-NN skipped", root)
        return None
    train_dir, val_dir = root / "train", root / "val"
    if profile.knn_per_class is not None:
        n = profile.knn_per_class
        train_dir = train_subset_per_class(train_dir, n, root.parent / f"knn_bank{n}")
        val_dir = train_subset_per_class(val_dir, n, root.parent / f"knn_val{n}")
    out: dict[str, Any] = {"resize": 224, "train_images": _count(train_dir), "val_images": _count(val_dir)}
    for name, model in models.items():
        out[name] = knn_evaluate(model, train_dir, val_dir, device, ks=[20], resize=224, crop=224,
                                 batch_size=128, num_workers=min(8, os.cpu_count() or 1))
    return out


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def train_subset_per_class(folder: Path, per_class: int, dest: Path) -> Path:
    """Copies of the first ``per_class`` images of each class folder (made once)."""
    if not dest.is_dir():
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            _copy_first(cls, dest / cls.name, per_class)
    return dest


def _export(run_dir: Path, out: Path, results: dict[str, Any], model_file: str) -> dict[str, Any]:
    """The fp16 teacher with its card in the metadata, split into parts under ``out`` (old parts removed)."""
    from trainer.model.checkpoint import export_backbone_safetensors, load_backbone
    from trainer.model_card import summary

    model, info = load_backbone(run_dir / "teacher_backbone.safetensors")
    results["summary"] = summary(results)
    path = run_dir / model_file
    card = {k: v for k, v in results.items() if k != "model"}
    export_backbone_safetensors(model, path, info.arch, info.epoch, trained=True, dtype=torch.float16,
                                extra={"summary": results["summary"], "model_card": card})
    for old in out.glob(f"{model_file}.part*"):
        old.unlink()
    parts = split_file(path, out)
    return {"file": model_file, "dtype": "float16", "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "parts": [p.name for p in parts]}


def _job_device(profile: Profile) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if profile.requires_cuda:
        raise RuntimeError("this profile trains the shipped model and needs a CUDA GPU; rehearse on a CPU with "
                           "--profile cpu_tiny")
    return torch.device("cpu")


def check_training_set(train_dir: Path, work: Path, profile: Profile) -> int:
    """The number of training photos; an error naming what was unpacked when some are missing."""
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{train_dir} does not exist; unpack the DUTS-TR parts first (see --help)")
    held = len(list((work / "probes").glob("*"))) if (work / "probes").is_dir() else 0
    count = sum(1 for p in train_dir.iterdir() if p.is_file()) + held
    if profile.min_train_images and count < profile.min_train_images:
        done = sorted(p.name for p in (work / ".unpacked").glob("*")) if (work / ".unpacked").is_dir() else []
        raise FileNotFoundError(f"{count} training photos in {train_dir}, expected at least "
                                f"{profile.min_train_images}: archives unpacked so far: {', '.join(done) or 'none'}; "
                                f"unpack all of {', '.join(DUTS_PARTS)} (a fresh machine loses earlier calls' files)")
    te = work / "duts-te-1k" / "images"
    found = sum(1 for _ in te.iterdir()) if te.is_dir() else 0
    if profile.min_eval_images and found < profile.min_eval_images:
        raise FileNotFoundError(f"{found} DUTS-TE images in {te}, expected {profile.min_eval_images}: unpack both "
                                "halves (calls 1 and 2)")
    return count


def _budget_minutes(cfg_minutes: float, profile: Profile, override: float | None) -> float:
    """The training budget: the recipe's (or ``--minutes``), cut to leave the evaluation its time."""
    minutes = cfg_minutes if override is None else override
    if profile.deadline_minutes is not None:
        left = profile.deadline_minutes - (time.monotonic() - PROCESS_START) / 60 - profile.eval_reserve_minutes
        if left < 1.0:
            raise RuntimeError(f"only {left:.1f} min left for training before the job's "
                               f"{profile.deadline_minutes:.1f}-minute deadline")
        minutes = min(minutes, left) if minutes > 0 else left
    return minutes


def _train_or_reuse(run_dir: Path, data: Path, work: Path, profile: Profile, device: torch.device,
                    minutes: float | None) -> tuple[dict[str, Any], Any]:
    """Train (or, when a finished run is there, reuse its figures): (train figures, config)."""
    from trainer.train.config import parse_config

    args = ["--config", str(ROOT / profile.recipe), "--data_path", str(data), "--output_dir", str(run_dir),
            "--probe_images", str(work / "probes")]
    done = run_dir / "train_figures.json"
    if done.exists():  # a retried call: never resume a finished, annealed run with a fresh plan
        logger.info("training already finished in %s; evaluating it again", run_dir)
        return json.loads(done.read_text()), parse_config(args)
    budget = _budget_minutes(parse_config(args).time_limit_minutes, profile, minutes)
    cfg, planned, train_minutes, peak = _train(args + ["--time_limit_minutes", f"{budget:.2f}"], device)
    images = sum(1 for _ in data.iterdir())
    figures = train_figures(run_dir, cfg, planned, images, train_minutes, peak)
    done.write_text(json.dumps(figures))
    return figures, cfg


def _safely(what: str, fn: Any) -> Any:
    """``fn()``, or ``{"error": ...}`` logged: one failed evaluation must not lose the trained model."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        logger.exception("%s failed", what)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _write_results(out: Path, results: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2))


def _arch_label(arch: str, patch: int) -> str:
    return f"{arch.replace('vit_', 'ViT-').replace('small', 'S').replace('tiny', 'Ti').replace('base', 'B')}/{patch}"


def run_job(profile_name: str, out: Path, work: Path = WORK, minutes: float | None = None) -> dict[str, Any]:
    """Preflight, train, export (first without, then with the figures), evaluate and package to ``out``."""
    profile = PROFILES[profile_name]
    device = _job_device(profile)
    train_dir = work / "duts-tr-192"
    check_training_set(train_dir, work, profile)
    probes = hold_back_probes(train_dir, work / "probes", profile.probe_images)
    data = train_subset(train_dir, profile.max_train_images, work)
    run_dir = work / f"run_{profile_name}"
    out.mkdir(parents=True, exist_ok=True)
    preflight(work, profile, device)
    results: dict[str, Any] = {
        "profile": profile_name, "recipe": profile.recipe, "device": _device_name(device),
        "device_type": device.type, "torch": f"torch {torch.__version__}", "probe_images": len(probes),
        "command": f"python3 -m trainer.duts_job run --profile {profile_name}"
                   + ("" if minutes is None else f" --minutes {minutes}"),
    }
    results["train"], cfg = _train_or_reuse(run_dir, data, work, profile, device, minutes)
    results["arch_label"] = _arch_label(cfg.arch, cfg.patch_size)
    results["jaccard"], results["knn"] = None, None
    results["model"] = _export(run_dir, out, results, profile.model_file)  # the model reaches $OUT first
    _write_results(out, results)
    shutil.copyfile(run_dir / "log.txt", out / "train_log.txt")
    results["jaccard"], results["knn"] = _evaluate(run_dir / "teacher_backbone.safetensors", cfg.arch,
                                                   cfg.patch_size, work, profile, device)
    results["model"] = _export(run_dir, out, results, profile.model_file)
    _write_results(out, results)
    _safely("probe grid", lambda: _probe_grid(run_dir, out))
    logger.info("%s", results["summary"])
    return results


def _probe_grid(run_dir: Path, out: Path) -> Path:
    from trainer.eval.probe_grid import make_probe_grid

    return make_probe_grid(run_dir / "probes", out / "heads_emerging.png")


def preflight(work: Path, profile: Profile, device: torch.device) -> None:
    """Seconds-long rehearsal of every step after training on a random-init model, before training,
    so that a broken evaluation, export or card fails before the GPU minutes are spent."""
    from trainer.eval.probes import save_attention_probes
    from trainer.model.checkpoint import export_backbone_safetensors
    from trainer.model.vit import build_vit
    from trainer.model_card import render
    from trainer.train.config import parse_config

    cfg = parse_config(["--config", str(ROOT / profile.recipe)])
    tmp = work / "preflight"
    shutil.rmtree(tmp, ignore_errors=True)
    model = build_vit(cfg.arch, cfg.patch_size).to(device).eval()
    export_backbone_safetensors(model, tmp / "teacher_backbone.safetensors", cfg.arch, 0)
    save_attention_probes(model, work / "probes", tmp / "probes" / "epoch0000", 64, device, limit=1)
    small = Profile(profile.recipe, None, 2, 2, model_file="preflight.safetensors")
    fake: dict[str, Any] = {"device": _device_name(device), "arch_label": _arch_label(cfg.arch, cfg.patch_size),
                            "recipe": profile.recipe, "command": "preflight", "torch": torch.__version__,
                            "probe_images": 1, "train": _fake_train_figures(cfg)}
    fake["jaccard"], fake["knn"] = _evaluate(tmp / "teacher_backbone.safetensors", cfg.arch, cfg.patch_size, work,
                                             small, device, strict=True)
    fake["model"] = _export(tmp, tmp / "out", fake, small.model_file)
    join_parts(find_parts(tmp / "out", small.model_file), tmp / "joined.safetensors", fake["model"]["sha256"])
    render(fake)
    _probe_grid(tmp, tmp / "out")
    logger.info("preflight passed: evaluation, export, split/join, model card and probe grid work on %s", device)


def _fake_train_figures(cfg: Any) -> dict[str, Any]:
    return {"images": 0, "epochs": 0, "planned_epochs": cfg.epochs, "steps_per_epoch": 0,
            "time_limit_minutes": cfg.time_limit_minutes, "minutes": 0.0, "img_per_s": 0.0, "peak_memory_gb": None,
            "precision": cfg.precision, "final_loss": 0.0, "teacher_entropy": 0.0, "log_out_dim": 1.0}


# -- step 3: ship here -------------------------------------------------------------------------
def ship(files: Path, checkpoint_dir: Path = ROOT / "checkpoints",
         picture: Path = ROOT / "docs" / "img" / "heads_emerging.png", allow_cpu: bool = False,
         readme: Path | None = ROOT / "README.md") -> Path:
    """Join and verify the model, then write it, its model card, the picture and the README block."""
    from trainer.model.checkpoint import load_backbone
    from trainer.model_card import readme_block, render, replace_readme_block

    results = json.loads((files / "results.json").read_text())
    if results["device_type"] != "cuda" and not allow_cpu:
        raise ValueError(f"this model was trained on {results['device']}, not a GPU; the shipped default must "
                         "come from the GPU recipe (pass --allow_cpu only to rehearse shipping)")
    model = results["model"]
    target = join_parts(find_parts(files, model["file"]), checkpoint_dir / model["file"], model["sha256"])
    load_backbone(target)  # strict load: a broken file fails here, before the card is written
    (checkpoint_dir / "README.md").write_text(render(results))
    if (files / "heads_emerging.png").exists():
        picture.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files / "heads_emerging.png", picture)
    if readme is not None:
        rel = os.path.relpath(picture, readme.parent)
        readme.write_text(replace_readme_block(readme.read_text(), readme_block(results, rel)))
    return target


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m trainer.duts_job", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    sub.add_parser("prepare", help="stage the data for the GPU calls under .data/gpu (here)")
    p = sub.add_parser("unpack", help="extract a carried folder's archives into .data/gpu_work (GPU machine)")
    p.add_argument("folder", type=Path)
    p = sub.add_parser("run", help="train, evaluate and package into $OUT (GPU machine)")
    p.add_argument("--profile", choices=sorted(PROFILES), default="h100")
    p.add_argument("--minutes", type=float, default=None, help="override the recipe's time_limit_minutes")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or WORK / "out"))
    p = sub.add_parser("ship", help="join, verify and install the model and its card (here)")
    p.add_argument("files", type=Path, help="the folder holding the run's results.json and model parts")
    p.add_argument("--allow_cpu", action="store_true", help="ship a CPU rehearsal model (testing only)")
    return ap


def main(argv: list[str] | None = None) -> Any:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    args = build_parser().parse_args(argv)
    if args.step == "prepare":
        for name, size in prepare().items():
            logger.info("%s/%s: %.1f MiB", STAGE, name, size / 2**20)
        return None
    if args.step == "unpack":
        return unpack(args.folder)
    if args.step == "run":
        return run_job(args.profile, args.out, minutes=args.minutes)
    return ship(args.files, allow_cpu=args.allow_cpu)


if __name__ == "__main__":
    main()
