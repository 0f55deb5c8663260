"""Image files: the one list of suffixes, the one folder scanner and the one RGB loader.

Every part of the trainer that looks for images in a folder (training data, k-NN folders,
segmentation images, attention probes, the benchmarks) uses :func:`list_images` or
:func:`scan_image_folder`, and every part that decodes one uses :func:`load_rgb`.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)


def is_image_file(path: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> bool:
    """A visible file (name not starting with ".") whose suffix, in any case, is in ``suffixes``."""
    return path.suffix.lower() in suffixes and not path.name.startswith(".") and path.is_file()


def list_images(
    folder: str | Path, recursive: bool = False, suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> list[Path]:
    """The image files in ``folder`` (at any depth with ``recursive``), sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if is_image_file(p, suffixes))


def scan_image_folder(root: str | Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """``(samples, classes)``: class sub-folders if there are any, else the images in ``root``.

    An ImageFolder tree (``root/<class>/**/<image>``) gets labels from the sorted class names;
    class folders without images are left out. A plain folder of images gets label 0.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist or is not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples: list[tuple[Path, int]] = []
    classes: list[str] = []
    for class_dir in class_dirs:
        files = list_images(class_dir, recursive=True)
        if files:
            samples += [(path, len(classes)) for path in files]
            classes.append(class_dir.name)
    if not samples:
        samples = [(path, 0) for path in list_images(root)]
        classes = [root.name] if samples else []
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}")
    return samples, classes


def load_rgb(source: str | Path | BinaryIO, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image file (a path or a binary file object) as RGB.

    With ``draft_size``, a JPEG may be decoded at 1/2, 1/4 or 1/8 of its size, as long as
    both sides stay at least ``draft_size`` pixels (``Image.draft``); other formats decode at
    full size. Raises one of :data:`DECODE_ERRORS` on a missing, truncated or corrupt file.
    """
    with Image.open(source) as image:
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
