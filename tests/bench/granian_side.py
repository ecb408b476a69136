"""An experiment for issue 20, not a supported way to serve: the server's app under granian.

``python -m tests.bench.granian_side`` (with granian importable, e.g. ``pip install --target
DIR granian`` and ``PYTHONPATH=DIR``) builds the app as ``interfaces.server`` does (same
settings from the environment, projections and background jobs running) and serves it with
granian's Rust HTTP/1.1 server, one worker, uvloop, on ``HOST``/``PORT``. ``proxy_live``
runs it as a variant (``SERVER_MODULE=tests.bench.granian_side``) beside uvicorn with
``BoundedHttpProtocol``. Granian has none of that protocol's limits (header deadline,
connection cap) or its one-write coalescing: this measures the HTTP server's share only.
"""

from __future__ import annotations

import os
from typing import Any


def app() -> Any:
    """The ASGI app as ``interfaces.server.serve`` builds it (granian's ``factory``)."""
    from infrastructure.settings import load_settings
    from interfaces.bootstrap import bootstrap, serving
    from interfaces.http.app import create_app
    from interfaces.server import configure_logging

    settings = load_settings(env_file=None)
    configure_logging(settings, debug=False)
    container = bootstrap(settings, run_projections=True, migrate=True)
    return create_app(container, run_jobs=True, doors=serving(container))


def main() -> None:
    from granian import Granian  # type: ignore[import-not-found,unused-ignore]

    Granian(
        "tests.bench.granian_side:app",
        address=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        interface="asgi",
        factory=True,
        workers=1,
        loop="uvloop",
        http="1",
        log_enabled=False,
    ).serve()


if __name__ == "__main__":
    main()
