"""Run a fake's ASGI app under uvicorn on a free loopback port, in a thread."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def serve_asgi(
    app: Any, *, name: str, host: str = "127.0.0.1", quiet: logging.Filter | None = None
) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its origin (``http://host:port``).

    ``quiet``: a filter for uvicorn's error log while serving (e.g. deliberate dropped
    connections a fake makes are not errors).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        ws="none",
        proxy_headers=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    error_log = logging.getLogger("uvicorn.error")
    if quiet is not None:
        error_log.addFilter(quiet)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.005)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        if quiet is not None:
            error_log.removeFilter(quiet)
