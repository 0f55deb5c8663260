"""Where the benchmarks find their datasets: a flag, else ``$DINO_DATA_DIR/<name>``."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "DINO_DATA_DIR"


def data_file(name: str, given: Path | None = None, flag: str = "--archive") -> Path:
    """``given`` when set, else ``$DINO_DATA_DIR/name``; exits with what to pass when neither."""
    if given is not None:
        path = Path(given)
    elif os.environ.get(DATA_DIR_ENV):
        path = Path(os.environ[DATA_DIR_ENV]) / name
    else:
        raise SystemExit(
            f"this benchmark needs {name}: pass {flag} PATH or set {DATA_DIR_ENV} to the folder "
            "that holds it"
        )
    if not path.exists():
        raise SystemExit(f"{path} not found; pass {flag} PATH to {name} or fix {DATA_DIR_ENV}")
    return path
