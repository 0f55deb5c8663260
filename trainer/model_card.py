"""A trained model's card, from its training run's files and evaluation JSON.

The card has two forms: a one-line ``summary``, which ``python -m trainer.export`` stores in the
weights' metadata (the service and the app show it), and a Markdown page:

    python -m trainer.model_card RUN_DIR --model checkpoints/dino_vits16_duts.safetensors \\
        --seg seg.json --seg_random seg_random.json --knn knn.json --out checkpoints/README.md

``RUN_DIR`` is a training ``--output_dir``: ``checkpoint.pth`` gives the run's flags, ``log.txt``
one line per epoch and ``metrics.jsonl`` the throughput. The JSON files come from
``python -m trainer.eval.seg ... --json`` (the trained model, and ``--random_init`` for the
baseline) and ``python -m trainer.eval.knn ... --json``; each one is optional.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import statistics
from pathlib import Path
from typing import Any

from trainer.model.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)
README_START = "<!-- shipped-model:start -->"
README_END = "<!-- shipped-model:end -->"
_SIZE_NAMES = {"tiny": "Ti", "small": "S", "base": "B"}


# -- the facts ------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-empty line."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_checkpoint(run_dir: Path) -> Path:
    """``run_dir/checkpoint.pth``; an error saying what a run folder holds when it is missing."""
    path = Path(run_dir) / "checkpoint.pth"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: RUN_DIR must be a training --output_dir "
            "(it holds checkpoint.pth and log.txt)"
        )
    return path


def run_args(run_dir: Path) -> dict[str, Any]:
    """The flags of the run in ``run_dir``, from its ``checkpoint.pth`` (read weights-only)."""
    return dict(load_checkpoint(run_checkpoint(run_dir)).get("args") or {})


def arch_label(arch: str, patch: int) -> str:
    """``vit_small``, 16 -> ``ViT-S/16``."""
    size = arch.removeprefix("vit_")
    return f"ViT-{_SIZE_NAMES.get(size, size)}/{patch}"


def _img_per_s(steps: list[dict[str, Any]]) -> float | None:
    """The median logged rate, leaving out the first epoch (start-up) when later ones exist."""
    warm = [s["img_per_s"] for s in steps if s.get("epoch", 0) >= 1 and s.get("img_per_s")]
    rates = warm or [s["img_per_s"] for s in steps if s.get("img_per_s")]
    return float(statistics.median(rates)) if rates else None


def train_figures(run_dir: Path, args: dict[str, Any]) -> dict[str, Any]:
    """The training figures: epochs and loss from ``log.txt``, steps and rate from metrics.jsonl."""
    run_dir = Path(run_dir)
    epochs = read_jsonl(run_dir / "log.txt") if (run_dir / "log.txt").is_file() else []
    if not epochs:
        raise ValueError(f"{run_dir / 'log.txt'} holds no finished epoch; train first")
    metrics = run_dir / "metrics.jsonl"
    steps = read_jsonl(metrics) if metrics.is_file() else []
    first = [s["iter"] for s in steps if s.get("epoch") == 0 and "iter" in s]
    last = epochs[-1]
    return {
        "epochs": len(epochs),
        "planned_epochs": args.get("epochs"),
        "steps_per_epoch": max(first) + 1 if first else None,
        "batch_size_per_gpu": args.get("batch_size_per_gpu"),
        "time_limit_minutes": args.get("time_limit_minutes") or 0.0,
        "img_per_s": _img_per_s(steps),
        "precision": args.get("precision"),
        "final_loss": last["train_loss"],
        "teacher_entropy": last.get("train_teacher_entropy"),
        "log_out_dim": math.log(args["out_dim"]) if args.get("out_dim") else None,
    }


def _read_json(path: Path | None) -> dict[str, Any] | None:
    return None if path is None else json.loads(Path(path).read_text())


def collect(
    run_dir: Path,
    seg: Path | None = None,
    seg_random: Path | None = None,
    knn: Path | None = None,
    dataset: str | None = None,
    hardware: str | None = None,
    linear: Path | None = None,
    davis: Path | None = None,
) -> dict[str, Any]:
    """Every fact of the card: the run's flags and figures, and the evaluation JSON files."""
    args = run_args(run_dir)
    data_path = str(args.get("data_path") or "").rstrip("/")
    label = arch_label(str(args.get("arch", "vit_small")), int(args.get("patch_size", 16)))
    return {
        "arch_label": label,
        "dataset": dataset or Path(data_path).name or "an image folder",
        "hardware": hardware,
        "recipe": args.get("config"),
        "train": train_figures(run_dir, args),
        "jaccard": {"trained": _read_json(seg), "random_init": _read_json(seg_random)},
        "knn": {"trained": _read_json(knn)},
        "linear": _read_json(linear),
        "davis": _read_json(davis),
    }


def model_file_facts(path: Path) -> dict[str, Any]:
    """Name, size, SHA-256 and stored dtype of an exported safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    with safe_open(str(path), "pt") as fh:
        dtype = str(fh.get_slice(next(iter(fh.keys()))).get_dtype()).lower()
    names = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "dtype": names.get(dtype, dtype),
    }


# -- the text -------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def summary(card: dict[str, Any]) -> str:
    """One line: what the model is, what it was trained on, and its headline figure."""
    train = card["train"]
    jac = card.get("jaccard") or {}
    trained = jac.get("trained")
    random = jac.get("random_init")
    figure = "mask Jaccard not measured"
    if trained is not None:
        figure = f"mask Jaccard {_pct(trained['jaccard'])}"
        figure += f" vs {_pct(random['jaccard'])} at random init" if random is not None else ""
    where = f" on {card['hardware']}" if card.get("hardware") else ""
    epochs = train["epochs"]
    return (
        f"{card['arch_label']} pretrained with DINO on {card['dataset']} "
        f"({epochs} epoch{'s' if epochs != 1 else ''}{where}); {figure}"
    )


def _jaccard_lines(card: dict[str, Any]) -> list[str]:
    jac = card.get("jaccard") or {}
    trained = jac.get("trained")
    random = jac.get("random_init")
    if trained is None:
        return ["Not measured (no `python -m trainer.eval.seg --json` file given)."]
    side = trained["image_size"]
    lines = [
        f"{trained['images']} images at {side}x{side}, last-block CLS attention, each head "
        f"kept to {trained['threshold']:.0%} of its mass, best head per image: "
        f"**{trained['jaccard']:.1f}** trained vs "
        f"{_pct(random and random['jaccard'])} for the same architecture at random init.",
        "",
        "| head | trained: mean IoU | trained: best head on | random init: mean IoU |",
        "|---|---|---|---|",
    ]
    random_heads = (random or {}).get("per_head_jaccard") or []
    for h, value in enumerate(trained["per_head_jaccard"]):
        rnd = random_heads[h] if h < len(random_heads) else None
        best = trained["best_head_counts"][h]
        lines.append(f"| {h} | {value:.1f} | {best} images | {_pct(rnd)} |")
    return lines


def _knn_lines(card: dict[str, Any]) -> list[str]:
    knn = (card.get("knn") or {}).get("trained")
    if knn is None:
        return ["Not measured (no `python -m trainer.eval.knn --json` file given)."]
    keys = sorted((k for k in knn if k.endswith("_top1")), key=lambda k: int(k[1:-5]))
    scores = ", ".join(f"k={k[1:-5]}: **{knn[k]:.2f}%**" for k in keys)
    return [
        f"Weighted k-NN (T={knn.get('temperature', 0.07)}) top-1 on `{knn.get('val_data')}` "
        f"with `{knn.get('train_data')}` as the bank, resized to {knn.get('resize')} and "
        f"cropped to {knn.get('crop')} px: {scores}."
    ]


def _linear_lines(card: dict[str, Any]) -> list[str]:
    lin = card.get("linear")
    if lin is None:
        return ["Not measured (no `python -m trainer.eval.linear` results.json given)."]
    note = f" ({lin['protocol']})" if isinstance(lin.get("protocol"), str) else ""
    return [f"Linear probe top-1 **{lin['top1']:.2f}%**, top-5 {lin['top5']:.2f}%{note}."]


def _davis_lines(card: dict[str, Any]) -> list[str]:
    dav = card.get("davis")
    if dav is None:
        return ["Not measured (no `python -m trainer.eval.davis` results.json given)."]
    mean = dav["mean"]
    count = len(dav.get("sequences", {}))
    return [
        f"DAVIS label propagation on {count} sequences: J&F **{100 * mean['JF']:.1f}**, "
        f"J {100 * mean['J']:.1f}, F {100 * mean['F']:.1f}."
    ]


def _training_lines(card: dict[str, Any]) -> list[str]:
    train = card["train"]
    budget = train["time_limit_minutes"]
    fitted = f", fitted to a {budget:g}-minute budget" if budget else ""
    steps = train["steps_per_epoch"]
    lines = [
        f"- Recipe: `{card['recipe'] or 'command-line flags only'}`; precision "
        f"{train['precision']}; batch {train['batch_size_per_gpu']} per GPU.",
        f"- {train['epochs']} epochs"
        + (f" of {steps} steps" if steps else "")
        + f" (planned {train['planned_epochs']}{fitted}).",
    ]
    if card.get("hardware"):
        lines.append(f"- Hardware: {card['hardware']}.")
    if train["img_per_s"] is not None:
        lines.append(f"- Throughput: {train['img_per_s']:.0f} img/s (median of the logged steps).")
    entropy = train["teacher_entropy"]
    if entropy is not None and train["log_out_dim"] is not None:
        tail = f", teacher entropy {entropy:.2f} (uniform: {train['log_out_dim']:.2f})"
    else:
        tail = ""
    lines.append(f"- Last epoch: loss {train['final_loss']:.3f}{tail}.")
    return lines


def render(card: dict[str, Any], model: dict[str, Any]) -> str:
    """The Markdown card of ``model`` (:func:`model_file_facts`), e.g. ``checkpoints/README.md``."""
    lines = [
        f"# {model['file']}",
        "",
        summary(card) + ".",
        "",
        "## Data",
        "",
        f"{card['dataset']}, unlabelled: DINO uses no labels.",
        "",
        "## Training",
        "",
        *_training_lines(card),
        "",
        "## Emergent segmentation (the paper's protocol)",
        "",
        *_jaccard_lines(card),
        "",
        "## k-NN",
        "",
        *_knn_lines(card),
        "",
        "## Linear probe",
        "",
        *_linear_lines(card),
        "",
        "## Video segmentation (DAVIS)",
        "",
        *_davis_lines(card),
        "",
        "## File",
        "",
        f"`{model['file']}`: teacher backbone, {model['dtype']}, {model['bytes']:,} bytes, "
        f"sha256 `{model['sha256']}`. Loads with `trainer.model.checkpoint.load_backbone` "
        "(a float32 model).",
        "",
    ]
    return "\n".join(lines)


def readme_block(card: dict[str, Any], card_path: str, picture: str | None = None) -> str:
    """The README's shipped-model paragraph: the summary, the card's address, the picture."""
    text = f"{summary(card)}. Model card: [{card_path}]({card_path}).\n"
    if picture:
        text += (
            "\nHeads emerging during training (rows: epochs; columns: the photo, then one "
            f"heat map per head):\n\n![attention heads emerging]({picture})\n"
        )
    return text


def replace_readme_block(readme: str, block: str) -> str:
    """``readme`` with the text between the shipped-model markers replaced by ``block``."""
    start = readme.find(README_START)
    end = readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {README_START} ... {README_END} block to fill")
    return readme[: start + len(README_START)] + "\n" + block + readme[end:]


# -- the command ----------------------------------------------------------------------------
def add_card_args(parser: argparse.ArgumentParser) -> None:
    """The card's inputs besides the run folder (shared by this CLI and ``trainer.export``)."""
    parser.add_argument(
        "--seg",
        type=Path,
        default=None,
        help="JSON of `python -m trainer.eval.seg --json` for the trained model",
    )
    parser.add_argument(
        "--seg_random",
        type=Path,
        default=None,
        help="the same for the architecture at random init (the baseline)",
    )
    parser.add_argument(
        "--knn", type=Path, default=None, help="JSON of `python -m trainer.eval.knn --json`"
    )
    parser.add_argument(
        "--linear", type=Path, default=None, help="results.json of `python -m trainer.eval.linear`"
    )
    parser.add_argument(
        "--davis", type=Path, default=None, help="results.json of `python -m trainer.eval.davis`"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="the training data's name (default: the --data_path folder's name)",
    )
    parser.add_argument("--hardware", default=None, help="what it trained on, e.g. '1x H100 80GB'")


def card_from_args(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    evals = (args.seg, args.seg_random, args.knn, args.dataset, args.hardware)
    return collect(run_dir, *evals, getattr(args, "linear", None), getattr(args, "davis", None))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "python -m trainer.model_card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="the training --output_dir")
    p.add_argument(
        "--model", type=Path, required=True, help="the file written by `python -m trainer.export`"
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the card (Markdown)")
    add_card_args(p)
    p.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also fill this README's shipped-model block with the summary",
    )
    p.add_argument(
        "--picture",
        default=None,
        help="with --readme: an image path (relative to the README) to show in it",
    )
    return p


def main(argv: list[str] | None = None) -> str:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        card = card_from_args(args.run_dir, args)
        text = render(card, model_file_facts(args.model))
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    logger.info("wrote %s: %s", args.out, summary(card))
    if args.readme is not None:
        card_path = os.path.relpath(args.out.resolve(), args.readme.resolve().parent)
        block = readme_block(card, Path(card_path).as_posix(), args.picture)
        args.readme.write_text(replace_readme_block(args.readme.read_text(), block))
    return text


if __name__ == "__main__":
    main()
