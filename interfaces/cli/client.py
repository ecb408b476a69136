"""``aiserve-gpuproxy-client``: the user CLI over the REST API.

Flags follow the seed: ``-key`` (or ``GPUPROXY_API_KEY``), ``-server`` (or ``GPUPROXY_SERVER``,
default http://localhost:8080), ``-dv``/``-dm``. Human-readable tables by default, ``--json``
for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from domain.guardrails import WINDOW_NAMES
from interfaces.cli.common import OneLineParser

console = Console()


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Api:
    def __init__(self, server: str, key: str | None, *, debug: bool = False) -> None:
        headers = {"X-API-Key": key} if key else {}
        self.client = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=30)
        self.debug = debug

    def get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None})

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self.client.base_url}: {exc}") from None
        if self.debug:
            print(f"{method} {path} -> {response.status_code}", file=sys.stderr)
        if response.status_code >= 400:
            try:
                message = response.json().get("detail") or response.text
            except ValueError:
                message = response.text
            raise ApiError(response.status_code, f"{response.status_code}: {message}")
        return response.json()


def show_credits(api: Api, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/billing/credits")
    if args.json:
        print(json.dumps(data, indent=2))
        return
    table = Table("field", "USD")
    for key, value in data.items():
        text = str(value)
        if key == "credits_auto_renew":
            state = "on" if value["enabled"] else "off"
            text = f"{state} (below {value['threshold']} buy {value['amount']})"
        if key != "currency":
            table.add_row(key, text)
    console.print(table)


def show_transactions(api: Api, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/billing/transactions", limit=args.limit, before=args.before)
    if args.json:
        print(json.dumps(data, indent=2))
        return
    table = Table("id", "time (UTC)", "type", "USD", "reason", "reference")
    for t in data["transactions"]:
        table.add_row(
            str(t["id"]), t["created_at"][:19], t["type"], t["amount"], t["reason"], t["reference"]
        )
    console.print(table)
    if data.get("next_before"):
        console.print(f"more: --before {data['next_before']}")


def show_spending(api: Api, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/guardrails/spending")
    if args.json:
        print(json.dumps(data, indent=2))
        return
    table = Table("window", "spent USD", "limit USD", "remaining USD")
    for name in WINDOW_NAMES:
        table.add_row(
            name,
            data["window_spent"].get(name, "0.00"),
            data["limits"].get(name, "off"),
            data["remaining"].get(name, ""),
        )
    console.print(table)


COMMANDS = {"credits": show_credits, "transactions": show_transactions, "spending": show_spending}


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="aiserve-gpuproxy-client", description="GPU Proxy user CLI")
    parser.add_argument(
        "-server", "--server", default=os.environ.get("GPUPROXY_SERVER", "http://localhost:8080")
    )
    parser.add_argument("-key", "--key", default=os.environ.get("GPUPROXY_API_KEY"))
    parser.add_argument("-dv", "--developer-mode", action="store_true")
    parser.add_argument("-dm", "--debug-mode", action="store_true")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sub.add_parser("credits", help="your credit balance")
    t = sub.add_parser("transactions", help="your money movements, newest first")
    t.add_argument("--limit", type=int, default=20)
    t.add_argument("--before", type=int)
    sub.add_parser("spending", help="your spend per guard-rail window")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.key:
        print(
            "aiserve-gpuproxy-client: error: an API key is needed (-key or GPUPROXY_API_KEY)",
            file=sys.stderr,
        )
        return 2
    api = Api(args.server, args.key, debug=args.debug_mode or args.developer_mode)
    try:
        COMMANDS[args.command](api, args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
