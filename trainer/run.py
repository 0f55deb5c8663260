"""DINO pretraining command line: ``python trainer/run.py ...``, ``torchrun ... trainer/run.py ...``
or the ``dino-train`` entry point.

Accepts the DINO authors' ``main_dino.py`` flags (see ``--help`` and docs/TRAINING.md). The run
itself is assembled in :mod:`trainer.train.build` and driven by :mod:`trainer.train.loop`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: import the package beside it
    _HERE = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    sys.path.insert(0, str(_HERE.parent))

import logging  # noqa: E402
from typing import Any  # noqa: E402

from trainer.train.config import StartupError, parse_config  # noqa: E402
from trainer.train.engine import NonFiniteLossError  # noqa: E402
from trainer.train.loop import train  # noqa: E402

logger = logging.getLogger("trainer.run")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags (``--config`` YAML first) and train; returns the last epoch's log line."""
    return train(parse_config(argv))


def cli(argv: list[str] | None = None) -> None:
    """The command: a NaN or infinite loss ends it with its message and exit status 1; a
    start-up problem (unwritable output folder, missing data, unreadable checkpoint) with its
    one-line message and exit status 2."""
    try:
        main(argv)
    except StartupError as error:
        logging.basicConfig(format="%(message)s")
        logger.error("error: %s", error)
        raise SystemExit(2) from None
    except NonFiniteLossError as error:
        logger.error("%s", error)
        raise SystemExit(1) from None


if __name__ == "__main__":
    cli()
