"""Split a file into numbered parts of bounded size and join them back, checked by SHA-256.

The GPU machine returns files of at most 16 MiB each, so a 43 MB fp16 ViT-S/16 travels as
``<name>.part00``, ``<name>.part01``, ... and is joined here, atomically, only when the
joined bytes hash to the digest recorded at the source.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from trainer.model.checkpoint import default_file_mode

DEFAULT_PART_BYTES = 15 * 1024 * 1024
_CHUNK = 1024 * 1024


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def split_file(path: str | Path, out_dir: str | Path, part_bytes: int = DEFAULT_PART_BYTES) -> list[Path]:
    """Write ``out_dir/<name>.partNN`` files of at most ``part_bytes`` each; returns them in order."""
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be >= 1, got {part_bytes}")
    path, out_dir = Path(path), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    with open(path, "rb") as src:
        while block := src.read(part_bytes):
            part = out_dir / f"{path.name}.part{len(parts):02d}"
            part.write_bytes(block)
            parts.append(part)
    return parts


def find_parts(folder: str | Path, name: str) -> list[Path]:
    """``<name>.partNN`` files in ``folder``, in order; an error if none or if numbers are missing."""
    parts = sorted(Path(folder).glob(f"{name}.part[0-9][0-9]"))
    if not parts:
        raise FileNotFoundError(f"no {name}.partNN files in {folder}")
    numbers = [int(p.name[-2:]) for p in parts]
    if numbers != list(range(len(parts))):
        raise FileNotFoundError(f"parts of {name} in {folder} are not numbered 00..{len(parts) - 1:02d}: "
                                f"found {', '.join(p.name for p in parts)}")
    return parts


def join_parts(parts: list[Path], out_path: str | Path, expected_sha256: str) -> Path:
    """Concatenate ``parts`` into ``out_path`` atomically if the result has ``expected_sha256``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as dst:
            for part in parts:
                block = Path(part).read_bytes()
                digest.update(block)
                dst.write(block)
        if digest.hexdigest() != expected_sha256:
            raise ValueError(f"joined {len(parts)} part(s) hash to {digest.hexdigest()}, expected "
                             f"{expected_sha256}: a part is missing, truncated or from another file")
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, out_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out_path
