"""``python -m backend``: run the attention service with uvicorn on DINO_HOST:DINO_PORT."""

from __future__ import annotations

import logging

import uvicorn

from backend.settings import Settings

H11_MAX_EVENT = 256 * 1024  # the largest request head read (uvicorn's default is 16 KB)


def main() -> None:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        "backend.main:app",
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_keep_alive=settings.keep_alive_s,  # idle and half-open connections are closed
        # h11 parses a request line of up to H11_MAX_EVENT bytes and hands the app even an
        # absurd path (a 100,000-character job id gets the JSON error, not a plain-text 400)
        http="h11",
        h11_max_incomplete_event_size=H11_MAX_EVENT,
        timeout_graceful_shutdown=settings.stop_grace_s,
        forwarded_allow_ips=settings.trusted_proxies or "",  # X-Forwarded-For from these only
        proxy_headers=bool(settings.trusted_proxies),
    )


if __name__ == "__main__":
    main()
