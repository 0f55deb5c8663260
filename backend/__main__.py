"""``python -m backend``: run the attention service with uvicorn on DINO_HOST:DINO_PORT."""

from __future__ import annotations

import logging

import uvicorn

from backend.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        "backend.main:app", host=settings.host, port=settings.port, log_level=settings.log_level
    )


if __name__ == "__main__":
    main()
