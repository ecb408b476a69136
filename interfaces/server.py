"""``aiserve-gpuproxyd``: the GPU Proxy server process.

Today it runs the ledger's background work (projection runners with their watchdog, the
PostgreSQL listener) until SIGINT/SIGTERM; the HTTP and gRPC interfaces attach here as they
are built.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from interfaces.cli.common import OneLineParser

log = logging.getLogger("aiserve.gpuproxyd")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="aiserve-gpuproxyd", description="GPU Proxy server")
    parser.add_argument(
        "-dv", "--developer-mode", action="store_true", help="developer mode: verbose logs"
    )
    parser.add_argument("-dm", "--debug-mode", action="store_true", help="debug logging")
    parser.add_argument("--env-file", default=".env", help="dotenv file (default .env)")
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations at start-up"
    )
    return parser


def configure_logging(level: str, debug: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    log_file = os.environ.get("AISERVE_LOG_FILE") or os.environ.get("LOG_FILE")
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from infrastructure.settings import ConfigError, load_settings

    try:
        settings = load_settings(env_file=args.env_file)
    except ConfigError as exc:
        print(f"aiserve-gpuproxyd: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, args.debug_mode or args.developer_mode)

    from interfaces.bootstrap import bootstrap

    try:
        container = bootstrap(settings, run_projections=True, migrate=not args.no_migrate)
    except Exception as exc:
        if args.developer_mode or args.debug_mode:
            raise
        print(f"aiserve-gpuproxyd: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    where = settings.sqlite_path if settings.db_type == "sqlite" else settings.db_host
    log.info("ledger ready (%s at %s); projections running", settings.db_type, where)
    try:
        while not stop.wait(30):
            lag = container.runner.lag()
            log.debug("projection lag %s", lag)
            if container.runner.last_error:
                log.warning("projection runner error: %s", container.runner.last_error)
    finally:
        container.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
