"""Export a training run's teacher backbone as one safetensors file, with its model card.

    python -m trainer.export RUN_DIR OUT.safetensors [--dtype fp16] [--seg seg.json ...]

``RUN_DIR`` is a training ``--output_dir``. The teacher backbone comes from its
``checkpoint.pth`` (read with ``torch.load(weights_only=True)``); the file's metadata holds the
architecture, the epochs trained, the card's one-line ``summary`` (which the service and the
app show) and the whole card as JSON (``model_card``), built from the run's ``log.txt`` and the
optional evaluation files (see ``python -m trainer.model_card``). Drop the file into
``checkpoints/`` and the service serves it; ``load_backbone`` returns a float32 model whatever
``--dtype`` stored.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from trainer.model.checkpoint import export_backbone_safetensors, load_backbone
from trainer.model_card import add_card_args, card_from_args, collect, run_checkpoint, summary

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def export_run(
    run_dir: Path,
    out: Path,
    dtype: str = "fp16",
    which: str = "teacher",
    card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the ``which`` backbone of ``run_dir/checkpoint.pth`` to ``out``; returns the extra.

    ``card`` defaults to :func:`trainer.model_card.collect` of the run without evaluations.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = run_checkpoint(run_dir)
    card = collect(run_dir) if card is None else card
    model, info = load_backbone(path, which)
    extra = {"summary": summary(card), "model_card": card}
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
    p.add_argument("out", type=Path, help="the .safetensors file to write")
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
    if args.out.suffix != ".safetensors":
        parser.error(f"OUT must end in .safetensors, got {args.out.name}")
    try:
        extra = export_run(
            args.run_dir, args.out, args.dtype, args.which, card_from_args(args.run_dir, args)
        )
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    logger.info("wrote %s (%s): %s", args.out, args.dtype, extra["summary"])
    return extra


if __name__ == "__main__":
    main()
