"""Export a training run's teacher backbone as one safetensors file named after the run.

    python -m trainer.export RUN_DIR [OUT] [--name NAME] [--dtype fp16] [--seg seg.json ...]

``RUN_DIR`` is a training ``--output_dir``. The file is ``OUT/<name>.safetensors`` where
``OUT`` is a folder (default ``checkpoints/``, the service's model folder) and ``<name>`` is
``--name`` or the run folder's name, so two runs never write the same file; an existing file
of that name is replaced only with ``--overwrite``. ``OUT`` may instead be a ``.safetensors``
file path, used as given.

The teacher backbone comes from the run's ``checkpoint.pth`` (read with
``torch.load(weights_only=True)``); the file's metadata holds the architecture, the epochs
trained, the run's name (``run``), the card's one-line ``summary`` (which the service and the
app show as the model's label) and the whole card as JSON (``model_card``), built from the
run's ``log.txt`` and the optional evaluation files (see ``python -m trainer.model_card``).
Dropped into ``checkpoints/``, the file is served under its name; ``load_backbone`` returns a
float32 model whatever ``--dtype`` stored.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import torch

from trainer.model.checkpoint import export_backbone_safetensors, load_backbone
from trainer.model_card import add_card_args, card_from_args, collect, run_checkpoint, summary

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_FOLDER = Path("checkpoints")
SUFFIX = ".safetensors"
RESERVED_NAMES = ("teacher_backbone", "checkpoint")  # the names every run folder holds
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def run_name(run_dir: Path) -> str:
    """The run folder's own name (``runs/vit_tiny`` -> ``vit_tiny``; ``.`` -> the folder's)."""
    return Path(run_dir).resolve().name


def check_name(name: str) -> str:
    """``name`` when it is a usable file stem, else ``ValueError`` saying what is allowed."""
    if not _NAME.fullmatch(name) or name.endswith(SUFFIX):
        raise ValueError(
            f"--name {name!r} is not a usable model name: use 1-100 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit, without the .safetensors suffix"
        )
    if name in RESERVED_NAMES:
        raise ValueError(
            f"--name {name!r} is the name every run folder uses, so runs would collide; "
            "give the run's own name with --name"
        )
    return name


def output_path(
    run_dir: Path, out: Path | None, name: str | None = None, overwrite: bool = False
) -> Path:
    """Where the export goes: ``out`` itself when it names a ``.safetensors`` file, else
    ``(out or checkpoints/)/<name or the run's name>.safetensors``, which must not exist yet
    unless ``overwrite``."""
    if out is not None and out.suffix == SUFFIX:
        if name is not None:
            raise ValueError("give either OUT as a .safetensors file or --name, not both")
        return out
    if out is not None and out.suffix and not out.is_dir():
        raise ValueError(f"OUT must be a folder or end in {SUFFIX}, got {out.name}")
    path = (out or DEFAULT_FOLDER) / f"{check_name(name or run_name(run_dir))}{SUFFIX}"
    if path.exists() and not overwrite:
        raise ValueError(
            f"{path} exists already (another export of this name); pass --overwrite to replace "
            "it or --name for a new name"
        )
    return path


def export_run(
    run_dir: Path,
    out: Path,
    dtype: str = "fp16",
    which: str = "teacher",
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the ``which`` backbone of ``run_dir/checkpoint.pth`` to the file ``out``; returns
    the metadata's ``extra`` (``summary``, ``model_card``, ``run``).

    ``card`` defaults to :func:`trainer.model_card.collect` of the run without evaluations.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = run_checkpoint(run_dir)
    card = collect(run_dir) if card is None else card
    model, info = load_backbone(path, which)
    extra = {"summary": summary(card), "model_card": card, "run": run_name(run_dir)}
    export_backbone_safetensors(
        model, out, info.arch, info.epoch, trained=True, extra=extra, dtype=DTYPES[dtype]
    )
    return extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "python -m trainer.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="the training --output_dir (holds checkpoint.pth)")
    p.add_argument(
        "out",
        type=Path,
        nargs="?",
        default=None,
        help="the folder to write NAME.safetensors into (default checkpoints/), or a "
        ".safetensors file path",
    )
    p.add_argument(
        "--name", default=None, help="the model's name, the file's stem (default: the run folder's)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing NAME.safetensors")
    p.add_argument(
        "--dtype",
        default="fp16",
        choices=tuple(DTYPES),
        help="dtype of the stored weights (default fp16: half the size)",
    )
    p.add_argument(
        "--which",
        default="teacher",
        choices=("teacher", "student"),
        help="which network of the checkpoint (the paper evaluates the teacher)",
    )
    add_card_args(p)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        out = output_path(args.run_dir, args.out, args.name, args.overwrite)
        card = card_from_args(args.run_dir, args)
        extra = export_run(args.run_dir, out, args.dtype, args.which, card)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    logger.info("wrote %s (%s): %s", out, args.dtype, extra["summary"])
    return {**extra, "path": str(out)}


if __name__ == "__main__":
    main()
