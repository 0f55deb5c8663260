"""``python -m app``: the web explorer on 127.0.0.1:7860, talking to the service at BACKEND_URL."""

from __future__ import annotations

import argparse
import logging
import os

from app.client import BackendClient, backend_url_from_env
from app.examples import example_paths
from app.ui import build_demo, launch

log = logging.getLogger("app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (env GRADIO_SERVER_NAME; 0.0.0.0 in a container)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        help="port (env GRADIO_SERVER_PORT)",
    )
    parser.add_argument(
        "--backend-url",
        default=backend_url_from_env(),
        help="attention service address (env BACKEND_URL)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for one service reply"
    )
    parser.add_argument(
        "--no-examples", action="store_true", help="do not offer the built-in example photos"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    client = BackendClient(args.backend_url, timeout=args.timeout)
    examples = [] if args.no_examples else example_paths()
    log.info(
        "web app on http://%s:%d, attention service at %s", args.host, args.port, client.base_url
    )
    launch(build_demo(client, examples), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
