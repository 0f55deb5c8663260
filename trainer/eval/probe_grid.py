"""One picture of attention heads emerging: the probe snapshots of a run, epochs by heads.

Rows are epochs (evenly spaced, first and last included), per probe image, each labelled with
its snapshot folder's name (``epoch0000`` is the snapshot after the first epoch, as the run
writes them); the first column is the image, then one column per head (its heat-map overlay,
as written by :mod:`trainer.eval.probes`), under a header row naming them (``image``,
``head 0``, ``head 1``, ... as in the overlay file names). Used for the README's picture of
the shipped model.

    python -m trainer.eval.probe_grid RUN_DIR/probes --out docs/img/heads_emerging.png
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

_EPOCH_DIR = re.compile(r"^epoch(\d{4,})$")
LABEL_WIDTH = 84
HEADER_HEIGHT = 16
GAP = 4


def row_label(epoch: int) -> str:
    """A row's label: the name of the snapshot folder it shows."""
    return f"epoch{epoch:04d}"


def column_headers(heads: int) -> list[str]:
    """The header of each tile column: the image, then the heads as the files number them."""
    return ["image", *(f"head {h}" for h in range(heads))]


def probe_epochs(probes_root: str | Path) -> dict[int, Path]:
    """``{epoch: folder}`` for every ``epochNNNN`` folder under ``probes_root``."""
    root = Path(probes_root)
    found = {
        int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _EPOCH_DIR.match(p.name))
    }
    if not found:
        raise FileNotFoundError(f"no epochNNNN probe folders in {root}")
    return dict(sorted(found.items()))


def pick_evenly(values: list[int], count: int) -> list[int]:
    """``count`` values spread over ``values`` (first and last included), in order, no repeats."""
    if count >= len(values):
        return list(values)
    idx = np.linspace(0, len(values) - 1, count).round().astype(int)
    return [values[i] for i in sorted(set(idx.tolist()))]


def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.png") if "_head" not in p.stem)


def _heads(folder: Path, stem: str) -> list[Path]:
    return sorted(
        folder.glob(f"{stem}_head*_heat.png"),
        key=lambda p: int(p.stem.split("_head")[1].split("_")[0]),
    )


def _header(columns: int, cell: int) -> Image.Image:
    strip = Image.new("RGB", (LABEL_WIDTH + columns * (cell + GAP), HEADER_HEIGHT), "white")
    draw = ImageDraw.Draw(strip)
    for i, text in enumerate(column_headers(columns - 1)):
        draw.text((LABEL_WIDTH + i * (cell + GAP) + 2, 2), text, fill="black")
    return strip


def _row(folder: Path, stem: str, cell: int, label: str) -> Image.Image:
    tiles = [folder / f"{stem}.png", *_heads(folder, stem)]
    row = Image.new("RGB", (LABEL_WIDTH + len(tiles) * (cell + GAP), cell + GAP), "white")
    for i, path in enumerate(tiles):
        with Image.open(path) as tile:
            row.paste(
                tile.convert("RGB").resize((cell, cell), Image.Resampling.BILINEAR),
                (LABEL_WIDTH + i * (cell + GAP), 0),
            )
    ImageDraw.Draw(row).text((6, cell // 2 - 6), label, fill="black")
    return row


def make_probe_grid(
    probes_root: str | Path, out: str | Path, rows: int = 5, images: int = 2, cell: int = 128
) -> Path:
    """Write the grid to ``out`` (PNG) and return its path."""
    epochs = probe_epochs(probes_root)
    chosen = pick_evenly(list(epochs), rows)
    stems = _stems(epochs[chosen[-1]])[:images]
    if not stems:
        raise FileNotFoundError(f"no probe images in {epochs[chosen[-1]]}")
    strips = [
        _row(epochs[e], stem, cell, row_label(e))
        for stem in stems
        for e in chosen
        if (epochs[e] / f"{stem}.png").exists()
    ]
    columns = 1 + max(len(_heads(epochs[e], stem)) for stem in stems for e in chosen)
    strips.insert(0, _header(columns, cell))
    width = max(s.width for s in strips)
    grid = Image.new("RGB", (width, sum(s.height for s in strips)), "white")
    y = 0
    for strip in strips:
        grid.paste(strip, (0, y))
        y += strip.height
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("probes_root", help="a run's probes/ folder (holding epochNNNN/ folders)")
    ap.add_argument("--out", required=True, help="PNG file to write")
    ap.add_argument("--rows", type=int, default=5, help="epochs shown per image")
    ap.add_argument("--images", type=int, default=2, help="probe images shown")
    ap.add_argument("--cell", type=int, default=128, help="tile side in pixels")
    args = ap.parse_args(argv)
    return make_probe_grid(args.probes_root, args.out, args.rows, args.images, args.cell)


if __name__ == "__main__":
    main()
