"""The shipped model's card: a one-line summary (kept in the weights' metadata, shown by the
UI) and ``checkpoints/README.md``, both written from the ``results.json`` of a DUTS job."""

from __future__ import annotations

from typing import Any


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _ok(entry: Any) -> bool:
    """An evaluation that ran (not missing, not ``{"error": ...}``)."""
    return isinstance(entry, dict) and "error" not in entry


def _jaccard_pair(results: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    jac = results.get("jaccard") or {}
    trained, random = jac.get("trained"), jac.get("random_init")
    return (trained if _ok(trained) else None), (random if _ok(random) else None)


def summary(results: dict[str, Any]) -> str:
    """One line: what the model is, how it was trained, and its headline figure."""
    train = results["train"]
    trained, random = _jaccard_pair(results)
    figure = "DUTS-TE mask Jaccard not measured"
    if trained is not None:
        figure = f"DUTS-TE mask Jaccard {_pct(trained['jaccard'])}"
        figure += f" vs {_pct(random['jaccard'])} at random init" if random is not None else ""
    return (f"{results['arch_label']} pretrained with DINO by this project on DUTS-TR "
            f"({train['images']:,} photos, {train['epochs']} epoch{'s' if train['epochs'] != 1 else ''}, "
            f"{train['minutes']:.1f} min on {results['device']}); {figure}")


def _jaccard_lines(results: dict[str, Any]) -> list[str]:
    trained, random = _jaccard_pair(results)
    if trained is None:
        reason = ((results.get("jaccard") or {}).get("trained") or {}).get("error", "not run")
        return [f"Not measured: {reason}."]
    lines = [f"DUTS-TE, {trained['images']} images at {trained['image_size']}x{trained['image_size']}, last-block "
             f"CLS attention, each head kept to {trained['threshold']:.0%} of its mass, best head per image: "
             f"**{trained['jaccard']:.1f}** trained vs {_pct(random and random['jaccard'])} for the same "
             "architecture at random init (the authors' code gives 20.7 for random init on 200 of these images).",
             "", "| head | trained: mean IoU | trained: best head on | random init: mean IoU |", "|---|---|---|---|"]
    for h, value in enumerate(trained["per_head_jaccard"]):
        rnd = random["per_head_jaccard"][h] if random is not None and h < len(random["per_head_jaccard"]) else None
        lines.append(f"| {h} | {value:.1f} | {trained['best_head_counts'][h]} images | {_pct(rnd)} |")
    return lines


def _knn_lines(knn: dict[str, Any] | None) -> list[str]:
    if not _ok(knn) or not _ok(knn.get("trained")) or not _ok(knn.get("random_init")):
        reason = (knn or {}).get("error", "no CIFAR-10 data in this run")
        return [f"k-NN on CIFAR-10: not measured ({reason})."]
    key = next(k for k in knn["trained"] if k.endswith("_top1"))
    return [f"k-NN ({key.split('_')[0][1:]} neighbours, T=0.07) top-1 on CIFAR-10 resized to {knn['resize']} px "
            f"({knn['train_images']:,} bank images, {knn['val_images']:,} test images): "
            f"**{knn['trained'][key]:.2f}%** trained vs {knn['random_init'][key]:.2f}% at random init."]


def render(results: dict[str, Any]) -> str:
    """``checkpoints/README.md`` for the shipped model."""
    train, model = results["train"], results["model"]
    lines = [
        f"# {model['file']}", "", summary(results) + ".", "",
        "## Data", "",
        f"DUTS-TR, {train['images']:,} unlabelled natural photos (short side 192 px), no labels used; "
        f"{results['probe_images']} photos held back as attention probes.", "",
        "## Recipe and command", "",
        f"Recipe `{results['recipe']}`, run by:", "", f"    {results['command']}", "",
        f"- Device: {results['device']} ({results['torch']}); precision {train['precision']}.",
        f"- {train['epochs']} epochs of {train['steps_per_epoch']} steps (planned {train['planned_epochs']}, "
        f"fitted to a {train['time_limit_minutes']:.1f}-minute budget), {train['minutes']:.1f} min of training.",
        f"- Throughput {train['img_per_s']:.0f} img/s; " + (
            "peak GPU memory not measured (no GPU)." if train.get("peak_memory_gb") is None
            else f"peak GPU memory {train['peak_memory_gb']:.1f} GB."),
        f"- Last epoch: loss {train['final_loss']:.3f}, teacher entropy {train['teacher_entropy']:.2f} "
        f"(uniform: {train['log_out_dim']:.2f}).", "",
        "## Emergent segmentation (the paper's protocol)", "",
        *_jaccard_lines(results), "",
        "## k-NN", "", *_knn_lines(results.get("knn")), "",
        "## File", "",
        f"`{model['file']}`: teacher backbone, {model['dtype']}, {model['bytes']:,} bytes, "
        f"sha256 `{model['sha256']}`. Loads with `trainer.model.checkpoint.load_backbone` (float32 model).", "",
    ]
    return "\n".join(lines)


README_START = "<!-- shipped-model:start -->"
README_END = "<!-- shipped-model:end -->"


def readme_block(results: dict[str, Any], picture: str) -> str:
    """The README's shipped-model paragraph: the summary, the card's address and the picture."""
    return (f"{summary(results)}. Model card: [checkpoints/README.md](checkpoints/README.md).\n\n"
            f"Heads emerging during training (rows: epochs; columns: the photo, then one heat map per head):\n\n"
            f"![attention heads emerging]({picture})\n")


def replace_readme_block(readme: str, block: str) -> str:
    """``readme`` with the text between the shipped-model markers replaced by ``block``."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {README_START} ... {README_END} block to fill")
    return readme[: start + len(README_START)] + "\n" + block + readme[end:]
