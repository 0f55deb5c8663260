"""Built-in example photos that work offline: scikit-image's bundled sample images, saved as
files."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# Photos shipped inside the scikit-image wheel (no download), each with an obvious foreground
# object.
EXAMPLE_NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def examples_dir() -> Path:
    """``DINO_APP_EXAMPLES_DIR``, else a folder in the system temp dir (a path Gradio may serve)."""
    return Path(
        os.environ.get("DINO_APP_EXAMPLES_DIR") or Path(tempfile.gettempdir()) / "dino-app-examples"
    )


def _load(name: str) -> np.ndarray:
    import skimage.data  # imported here: only needed the first time the files are written

    if name not in EXAMPLE_NAMES:
        raise ValueError(f"unknown example {name!r}; choose one of {', '.join(EXAMPLE_NAMES)}")
    return getattr(skimage.data, name)()


def example_paths(
    folder: str | Path | None = None, names: tuple[str, ...] = EXAMPLE_NAMES
) -> list[Path]:
    """JPEG files of the example photos, written once to ``folder``; unreadable ones are skipped."""
    folder = Path(folder) if folder else examples_dir()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.jpg"
        if not path.exists():
            try:
                pixels = _load(name)
            except Exception as exc:  # noqa: BLE001 - a missing sample must not stop the app
                log.warning("example %s is unavailable: %s", name, exc)
                continue
            tmp = path.with_suffix(".tmp.jpg")
            Image.fromarray(pixels).convert("RGB").save(tmp, quality=92)
            tmp.replace(path)
        paths.append(path)
    return paths
