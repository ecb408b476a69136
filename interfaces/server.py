"""``aiserve-gpuproxyd``: the GPU Proxy server (HTTP and gRPC APIs, projections, jobs).

``WORKERS=N`` above 1 forks N such servers on the same sockets under a supervisor
(``interfaces.workers``); ``FORWARDED_ALLOW_IPS`` decides whose forwarding headers name the
client (``interfaces.http.forwarded``; uvicorn's own proxy-header handling stays off).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from infrastructure import log_redaction
from interfaces.cli.common import OneLineParser

if TYPE_CHECKING:
    from infrastructure.settings import Settings

log = logging.getLogger("aiserve.gpuproxyd")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="aiserve-gpuproxyd", description="GPU Proxy server")
    parser.add_argument(
        "-dv",
        "--developer-mode",
        action="store_true",
        help="developer mode: verbose logs, tracebacks in error bodies",
    )
    parser.add_argument("-dm", "--debug-mode", action="store_true", help="debug logging")
    parser.add_argument("--env-file", default=".env", help="dotenv file (default .env)")
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations at start-up"
    )
    return parser


def _syslog_handler(settings: Settings) -> logging.Handler:
    facility = logging.handlers.SysLogHandler.facility_names[settings.log.syslog_facility]
    if settings.log.syslog_network in {"unix", "unixgram"}:
        return logging.handlers.SysLogHandler(
            address=settings.log.syslog_address, facility=facility
        )
    host, _, port = settings.log.syslog_address.rpartition(":")
    socktype = socket.SOCK_STREAM if settings.log.syslog_network == "tcp" else socket.SOCK_DGRAM
    return logging.handlers.SysLogHandler(
        address=(host or "localhost", int(port or 514)), facility=facility, socktype=socktype
    )


def configure_logging(settings: Settings, *, debug: bool) -> None:
    """Console always; LOG_FILE/AISERVE_LOG_FILE and syslog when configured."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log.file:
        handlers.append(logging.FileHandler(settings.log.file))
    if settings.log.syslog_enabled:
        handlers.append(_syslog_handler(settings))
    logging.basicConfig(
        level=logging.DEBUG if debug else getattr(logging, settings.log.level, logging.INFO),
        format=FORMAT,
        handlers=handlers,
        force=True,
    )
    log_redaction.install(handlers)  # no credential in any line, whoever logs it
    # hpack logs raw (Huffman-coded) header blocks at debug level: no filter can read those
    quiet = (
        "httpx",
        "httpcore",
        "hpack",
        "h2",
        *(() if settings.log.access_log else ("uvicorn.access",)),
    )
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from infrastructure.settings import ConfigError, load_settings

    try:
        settings = load_settings(env_file=args.env_file)
    except ConfigError as exc:
        print(f"aiserve-gpuproxyd: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        configure_logging(settings, debug=args.debug_mode or args.developer_mode)
    except (OSError, ValueError) as exc:
        print(f"aiserve-gpuproxyd: cannot set up logging: {exc}", file=sys.stderr)
        return 2

    from interfaces.listeners import PortUnavailableError, bind_ports, close_all

    try:  # before the heavy imports and start-up: a busy port is one line naming its variable
        http_sockets, grpc_sockets = bind_ports(settings)
    except PortUnavailableError as exc:
        print(f"aiserve-gpuproxyd: {exc}", file=sys.stderr)
        return 2

    if settings.http.workers == 1:
        return serve(settings, args, http_sockets, grpc_sockets)
    if not settings.redis.url:
        log.warning(
            "WORKERS=%d without Redis: rate limits and failed-login counts are per worker",
            settings.http.workers,
        )
    from interfaces.workers import Supervisor

    log.info("%d workers on %s:%s", settings.http.workers, settings.http.host, settings.http.port)
    try:
        return Supervisor(
            settings.http.workers, lambda: serve(settings, args, http_sockets, grpc_sockets)
        ).run()
    finally:
        close_all([*http_sockets, *grpc_sockets])


def serve(
    settings: Settings,
    args: argparse.Namespace,
    http_sockets: list[socket.socket],
    grpc_sockets: list[socket.socket],
) -> int:
    """One server process (the only one, or a worker): start-up, serve until told to stop."""
    developer = args.developer_mode
    import uvicorn

    from interfaces.bootstrap import bootstrap, serving
    from interfaces.http.app import create_app
    from interfaces.http_limits import uvicorn_limits
    from interfaces.listeners import close_all

    try:
        container = bootstrap(settings, run_projections=True, migrate=not args.no_migrate)
    except Exception as exc:
        close_all([*http_sockets, *grpc_sockets])
        if developer or args.debug_mode:
            raise
        print(f"aiserve-gpuproxyd: cannot start: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    doors = serving(container)  # the parts REST, WebSocket, agents and gRPC share
    app = create_app(container, developer_mode=developer, run_jobs=True, doors=doors)
    if settings.grpc.enabled:
        from interfaces.grpc.server import GrpcServer
        from interfaces.grpc_inference.service import InferenceService

        # the HTTP app's proxy runtime, shared; OIP v2 inference on the same port
        grpc = GrpcServer(
            container,
            doors.proxy,
            extra_services=[InferenceService(container)],
            sockets=grpc_sockets,
            metrics=doors.metrics.grpc,  # counted beside the HTTP metrics at /metrics
        )
        app.on_startup.append(grpc.start)
        app.on_shutdown.append(grpc.stop)  # shutdown hooks run last-first: before the runtime
    where = settings.db.sqlite_path if settings.db.type == "sqlite" else settings.db.host
    log.info(
        "ledger on %s (%s); HTTP on %s:%s",
        settings.db.type,
        where,
        settings.http.host,
        settings.http.port,
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.http.host,
            port=settings.http.port,
            log_config=None,
            access_log=settings.log.access_log,
            lifespan="on",
            timeout_graceful_shutdown=30,
            server_header=False,
            proxy_headers=False,  # FORWARDED_ALLOW_IPS decides (interfaces/http/forwarded.py)
            **uvicorn_limits(settings),  # header deadline, keep-alive, connection cap
        )
    )
    try:
        # SIGINT/SIGTERM: stop accepting, finish in-flight requests, then return
        server.run(sockets=http_sockets)
    finally:
        container.close()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
