"""Client commands for the proxy, load balancing and payments."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from rich.table import Table

from domain.errors import DomainError
from domain.money import usd_to_micros
from interfaces.cli.output import CliError, money, print_json, print_table

PROTOCOLS = ("http", "https", "openinference", "mcp")
STRATEGIES = (
    "round_robin",
    "equal_weighted",
    "weighted_round_robin",
    "least_connections",
    "least_response_time",
)


def _body(data: str | None) -> Any:
    """``--data``: JSON if it parses, else the text as is; ``@FILE`` reads a file."""
    if data is None:
        return None
    if data.startswith("@"):
        try:
            with open(data[1:], encoding="utf-8") as handle:
                data = handle.read()
        except OSError as exc:
            raise CliError(f"cannot read {data[1:]}: {exc.strerror}") from None
    try:
        return json.loads(data)
    except ValueError:
        return data


def _pay_amount(text: str) -> str:
    """A positive USD amount with at most 6 decimals, checked before anything is sent."""
    try:
        positive = usd_to_micros(text) > 0
    except DomainError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if not positive:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive USD amount (e.g. 50.00)")
    return text.strip()


def proxy(api: Any, args: argparse.Namespace) -> None:
    """Send one request through the proxy; print the upstream's body (status on stderr)."""
    envelope: dict[str, Any] = {"protocol": args.protocol, "method": args.method}
    try:
        envelope["instance_id"] = str(uuid.UUID(args.target))
    except ValueError:
        envelope["target_url"] = args.target
    body = _body(args.data)
    if body is not None:
        envelope["body"] = body
    if args.model:
        envelope["model"] = args.model
    if args.path:
        envelope["path"] = args.path
    if args.header:
        envelope["headers"] = dict(h.split(":", 1) for h in args.header)
    grpc_proxy = getattr(api, "proxy", None)  # --grpc: the ProxyRequest RPC
    if grpc_proxy is not None:
        status, instance, text = grpc_proxy(envelope, args.timelimit)
    else:
        status, instance, text = _post_envelope(api, envelope, args.timelimit)
    if args.json:  # the answer in an envelope: status, instance, body (parsed when JSON)
        print_json({"status": status, "instance_id": instance, "body": _body(text)})
        return
    print(f"{status} from instance {instance}", file=sys.stderr)
    sys.stdout.write(text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")


def _post_envelope(
    api: Any, envelope: dict[str, Any], timelimit: float | None
) -> tuple[int, str, str]:
    headers = {"X-Timelimit": str(timelimit)} if timelimit else {}
    try:
        response = api.client.post(
            "/api/v1/gpu/proxy", json=envelope, headers=headers, timeout=None
        )
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the server: {exc}") from None
    instance = response.headers.get("x-gpuproxy-instance")
    if instance is None:  # refused by GPU Proxy itself, not answered by an instance
        try:
            detail = response.json().get("detail") or response.text
        except ValueError:
            detail = response.text
        raise CliError(f"{response.status_code}: {detail}")
    return response.status_code, instance, response.text


def lb_strategy(api: Any, args: argparse.Namespace) -> None:
    if args.name is None:
        data = api.get("/api/v1/loadbalancer/strategy")
    else:
        data = api._send("PUT", "/api/v1/loadbalancer/strategy", json={"strategy": args.name})
    if args.json:
        print_json(data)
    else:
        print(f"strategy: {data['strategy']}")


def load(api: Any, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/loadbalancer/load", type=args.kind)
    if args.json:
        print_json(data)
        return
    print(f"strategy: {data['strategy']}")
    if "server" in data:
        table = Table("instance", "provider", "state", "active", "ewma ms", "requests", "errors")
        for item in data["server"]["instances"]:
            ewma = item["avg_response_time_ms"]
            table.add_row(
                item["instance_id"],
                item["provider"],
                "ejected" if item["ejected"] else item["state"],
                str(item["active_connections"]),
                "-" if ewma is None else f"{ewma:.1f}",
                str(item["total_requests"]),
                str(item["total_errors"]),
            )
        print_table(table)
    if "provider" in data:
        table = Table("provider", "instances", "active", "requests", "errors")
        for name, item in data["provider"].items():
            table.add_row(
                name,
                str(item["instances"]),
                str(item["active_connections"]),
                str(item["total_requests"]),
                str(item["total_errors"]),
            )
        print_table(table)


def pay(api: Any, args: argparse.Namespace) -> None:
    headers = {"X-Billing": args.provider, "X-Preferred-Payment": args.method}
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    data = api.post("/api/v1/billing/payment", {"amount": args.amount, "currency": "USD"}, headers)
    if args.json:
        print_json(data)
        return
    amount = money(data["amount"])
    print(f"payment {data['id']}: {data['status']} ({amount} USD via {data['provider']})")
    crypto = data.get("crypto")
    if crypto:
        print(
            f"send exactly {crypto['amount_units']} USDC units ({amount} USDC) on "
            f"{crypto['network']} from {crypto['from_wallet']} to {crypto['pay_to']} "
            f"(token {crypto['token_contract']}) before {crypto['expires_at']}"
        )
    if data.get("next_action_url"):
        print(f"confirm the payment at {data['next_action_url']}")


def payments(api: Any, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/billing/payments")
    if args.json:
        print_json(data)
        return
    table = Table("id", "status", "USD", "provider", "method", "created")
    for p in data["payments"]:
        table.add_row(
            p["id"], p["status"], p["amount"], p["provider"], p["payment_method"], p["created_at"]
        )
    print_table(table)


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], None]] = {
    "proxy": proxy,
    "lb-strategy": lb_strategy,
    "load": load,
    "pay": pay,
    "payments": payments,
}


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("proxy", parents=[common], help="send a request to your instance(s)")
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("target", metavar="URL_OR_INSTANCE", help="instance URL or instance id")
    p.add_argument("--data", help="request body: JSON, text, or @FILE")
    p.add_argument("--method", "-X", default="POST")
    p.add_argument("--path", help="path on the instance (e.g. /v2/health/ready)")
    p.add_argument("--model", help="openinference: the model name")
    p.add_argument("--header", "-H", action="append", metavar="NAME:VALUE")
    p.add_argument("--timelimit", type=float, metavar="S", help="X-Timelimit in seconds")
    s = sub.add_parser("lb-strategy", parents=[common], help="show or set your balancing strategy")
    s.add_argument("name", nargs="?", choices=STRATEGIES)
    ld = sub.add_parser("load", parents=[common], help="server and provider load")
    ld.add_argument("kind", nargs="?", choices=("server", "provider", "all"), default="all")
    pay_parser = sub.add_parser("pay", parents=[common], help="buy credits")
    pay_parser.add_argument("amount", type=_pay_amount, help="USD, e.g. 50.00")
    pay_parser.add_argument("--provider", default="stripe", help="stripe, crypto or afterdark")
    pay_parser.add_argument("--method", required=True, help="card:pm_… or crypto:NETWORK:WALLET")
    pay_parser.add_argument("--idempotency-key", metavar="K")
    sub.add_parser("payments", parents=[common], help="your payments")
