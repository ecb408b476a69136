"""``aiserve-gpuproxy-client``: the user CLI.

The REST API it talks to is not built yet, so it has no commands so far; it parses the
common flags (``-server``, ``-key``, ``-dv``, ``-dm``) and says so plainly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from interfaces.cli.common import OneLineParser


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="aiserve-gpuproxy-client", description="GPU Proxy user CLI")
    parser.add_argument(
        "-server", "--server", default=os.environ.get("GPUPROXY_SERVER", "http://localhost:8080")
    )
    parser.add_argument("-key", "--key", default=os.environ.get("GPUPROXY_API_KEY"))
    parser.add_argument("-dv", "--developer-mode", action="store_true")
    parser.add_argument("-dm", "--debug-mode", action="store_true")
    parser.add_argument("command", nargs="?")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    print(
        f"aiserve-gpuproxy-client: unknown command {args.command!r}: the client has no "
        "commands yet (they arrive with the REST API); use aiserve-gpuproxy-admin",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
