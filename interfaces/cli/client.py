"""``aiserve-gpuproxy-client``: the user CLI over the REST API.

Flags follow the seed: ``-key`` (or ``GPUPROXY_API_KEY``), ``-server`` (or ``GPUPROXY_SERVER``,
default http://localhost:8080), ``-dv``/``-dm``; ``--grpc`` sends every command through the gRPC
API instead (``--grpc-target`` or ``GPUPROXY_GRPC``, default localhost:9090; ``--grpc-tls``,
``--grpc-ca FILE``), with the same output. Human-readable tables by default, ``--json``
(before or after the command) for scripts; in a pipe, tables are tab-separated with every value
whole. Errors are one line on stderr: exit code 2 for bad arguments or input (the CLI's checks,
or the server's 400/422), 1 when the operation failed (refused, not found, network).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from domain.guardrails import WINDOW_NAMES
from interfaces.cli import proxy_commands, sessions_commands
from interfaces.cli.common import OneLineParser
from interfaces.cli.output import CliError, money, print_json, print_table

console = Console()
PROG = "aiserve-gpuproxy-client"
SETTLED_STATES = frozenset({"running", "failed", "stopping", "terminated"})
# exit 2 like argparse: the server refused the input (400/422), or a usage error (status 2)
BAD_INPUT = frozenset({2, 400, 422})


class ApiError(CliError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class Api:
    def __init__(self, server: str, key: str | None, *, debug: bool = False) -> None:
        headers = {"X-API-Key": key} if key else {}
        self.client = httpx.Client(base_url=server.rstrip("/"), headers=headers, timeout=30)
        self.debug = debug

    def get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(
        self,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        return self._send("POST", path, json=body, headers=headers or {}, **extra)

    def delete(self, path: str) -> Any:
        return self._send("DELETE", path)

    def close(self) -> None:
        self.client.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, _one_line(f"cannot reach {self.client.base_url}: {exc}")) from None
        if self.debug:
            print(f"{method} {path} -> {response.status_code}", file=sys.stderr)
        if response.status_code >= 400:
            try:
                message = response.json().get("detail") or response.text
            except (ValueError, AttributeError):
                message = response.text
            raise ApiError(response.status_code, _one_line(f"{response.status_code}: {message}"))
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, "the server answered with invalid JSON") from None


def _folded(header: str) -> Column:
    """A column whose values are copied (ids, URLs): folded when narrow, never cut to "…"."""
    return Column(header, overflow="fold")


# ------------------------------------------------------------------------ billing


def show_credits(api: Api, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/billing/credits")
    if args.json:
        print_json(data)
        return
    table = Table("field", "USD")
    for key, value in data.items():
        text = str(value)
        if key == "credits_auto_renew":
            state = "on" if value["enabled"] else "off"
            text = f"{state} (below {money(value['threshold'])} buy {money(value['amount'])})"
        if key != "currency":
            table.add_row(key, text)
    print_table(table)


def show_transactions(api: Api, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/billing/transactions", limit=args.limit, before=args.before)
    if args.json:
        print_json(data)
        return
    table = Table("id", "time (UTC)", "type", "USD", "reason", "reference")
    for t in data["transactions"]:
        table.add_row(
            str(t["id"]), t["created_at"][:19], t["type"], t["amount"], t["reason"], t["reference"]
        )
    print_table(table)
    if data.get("next_before"):
        console.print(f"more: --before {data['next_before']}")


def show_spending(api: Api, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/guardrails/spending")
    if args.json:
        print_json(data)
        return
    table = Table("window", "spent USD", "limit USD", "remaining USD")
    for name in WINDOW_NAMES:
        table.add_row(
            name,
            data["window_spent"].get(name, "0.00"),
            data["limits"].get(name, "off"),
            data["remaining"].get(name, ""),
        )
    print_table(table)


# ---------------------------------------------------------------------- GPU catalog


def offers_table(offers: list[dict[str, Any]]) -> Table:
    table = Table(
        "provider", _folded("id"), "gpu", "count", "VRAM GB", "USD/h", "location", "reliab."
    )
    for o in offers:
        table.add_row(
            o["provider"],
            o["id"],
            o["gpu_model"],
            str(o["num_gpus"]),
            f"{o['vram_gb']:g}",
            o["price_per_hour"],
            o["location"],
            "" if o.get("reliability") is None else f"{o['reliability']:.3f}",
        )
    return table


def list_offers(api: Api, args: argparse.Namespace) -> None:
    data = api.get(
        "/api/v1/gpu/instances",
        provider=args.provider,
        min_vram=args.min_vram,
        max_price=args.max_price,
        gpu_model=args.gpu,
        region=args.region,
        num_gpus=args.num_gpus,
        limit=args.limit,
    )
    for name, message in sorted(data.get("errors", {}).items()):
        print(f"warning: provider {name}: {_one_line(message)}", file=sys.stderr)
    if args.json:
        print_json(data)
        return
    print_table(offers_table(data["offers"]))
    console.print(f"{data['count']} offer(s)")


# ------------------------------------------------------------------------ instances


def _segment(text: object) -> str:
    """One URL path segment: a ``/`` or ``?`` in an id cannot change the route."""
    return quote(str(text), safe="")


def _instance_path(provider: str, instance_id: uuid.UUID | str) -> str:
    return f"/api/v1/gpu/instances/{_segment(provider)}/{_segment(instance_id)}"


INSTANCE_FIELDS = (
    "id",
    "provider",
    "offer_id",
    "state",
    "gpu_model",
    "num_gpus",
    "price_per_hour",
    "endpoint",
    "image",
    "requested_at",
    "started_at",
    "ended_at",
    "billed",
    "cost_so_far",
    "reason",
    "provider_instance_id",
)


MONEY_FIELDS = frozenset({"price_per_hour", "billed", "cost_so_far", "held"})


def show_instance_data(instance: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json({"instance": instance})
        return
    table = Table("field", "value")
    for name in INSTANCE_FIELDS:
        value = instance.get(name)
        text = "" if value is None else str(value)
        table.add_row(name, money(text) if name in MONEY_FIELDS else text)
    print_table(table)


def show_instance(api: Api, args: argparse.Namespace) -> None:
    data = api.get(_instance_path(args.provider, args.instance_id))
    show_instance_data(data["instance"], args.json)


def destroy_instance(api: Api, args: argparse.Namespace) -> None:
    data = api.delete(_instance_path(args.provider, args.instance_id))
    show_instance_data(data["instance"], args.json)


def show_rentals(api: Api, args: argparse.Namespace) -> None:
    data = api.get("/api/v1/gpu/rentals")
    if args.json:
        print_json(data)
        return
    table = Table(
        _folded("id"), "provider", "gpu", "count", "state", "USD/h", "cost USD", _folded("endpoint")
    )
    for r in data["rentals"]:
        table.add_row(
            r["id"],
            r["provider"],
            r["gpu_model"],
            str(r["num_gpus"]),
            r["state"],
            r["price_per_hour"],
            r["cost_so_far"],
            r["endpoint"] or "",
        )
    print_table(table)


def _rent_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.image:
        body["image"] = args.image
    if args.port:
        body["ports"] = args.port
    return body


def create_instance(api: Api, args: argparse.Namespace) -> None:
    key = args.idempotency_key or str(uuid.uuid4())
    try:
        data = api.post(
            f"/api/v1/gpu/instances/{_segment(args.provider)}/{_segment(args.offer_id)}",
            _rent_body(args),
            headers={"Idempotency-Key": key},
        )
    except ApiError as exc:
        if exc.status == 0:  # the rent may have happened: the same key makes a retry safe
            raise ApiError(0, f"{exc} (retry with --idempotency-key {key})") from None
        raise
    instance = data["instance"]
    if not args.wait:
        show_instance_data(instance, args.json)
        return
    instance = wait_for_instance(api, instance, args.timeout, args.interval)
    show_instance_data(instance, args.json)
    if instance["state"] != "running":
        raise CliError(_not_running(instance, args.timeout))


def _not_running(instance: dict[str, Any], timeout: float) -> str:
    where = f"instance {instance['id']}"
    if instance["state"] in SETTLED_STATES:
        reason = f": {instance['reason']}" if instance.get("reason") else ""
        return _one_line(f"{where} is {instance['state']}{reason}")
    return (
        f"{where} still {instance['state']} after {timeout:g} s; it was not destroyed "
        f"(destroy {instance['provider']} {instance['id']})"
    )


def _progress_text(instance: dict[str, Any]) -> str:
    return f"{instance['provider']} {instance['gpu_model']} {instance['id']}: {instance['state']}"


def wait_for_instance(
    api: Api, instance: dict[str, Any], timeout: float, interval: float
) -> dict[str, Any]:
    """Poll the instance until it settles or ``timeout`` seconds pass; spinner on stderr."""
    deadline = time.monotonic() + timeout
    path = _instance_path(instance["provider"], instance["id"])
    status_console = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    quiet = not status_console.is_terminal  # no spinner residue in logs and pipes
    with Progress(*columns, console=status_console, transient=True, disable=quiet) as progress:
        task = progress.add_task(_progress_text(instance), total=None)
        while instance["state"] not in SETTLED_STATES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(interval, left))
            try:
                instance = api.get(path)["instance"]
            except ApiError as exc:
                hint = f"instance {instance['provider']} {instance['id']}"
                raise ApiError(exc.status, f"{exc} (it was created; see: {hint})") from None
            progress.update(task, description=_progress_text(instance))
    return instance


def show_reservation(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    table = Table(_folded("field"), _folded("value"))
    for key in ("id", "state", "count", "gpus", "provider", "held", "reason"):
        text = str(data.get(key))
        table.add_row(key, money(text) if key in MONEY_FIELDS else text)
    table.add_row("instances", "\n".join(data.get("instances", [])) or "-")
    for attempt in data.get("failed_attempts", []):
        table.add_row(
            "failed rent", f"{attempt['provider']} {attempt['offer_id']}: {attempt['reason']}"
        )
    print_table(table)


def reserve_gpus(api: Api, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"count": args.count, "provider": args.provider or "all"}
    for field, value in (
        ("min_vram", args.min_vram),
        ("max_price", args.max_price),
        ("gpu_model", args.gpu),
        ("image", args.image),
    ):
        if value is not None:
            body[field] = value
    text = f"reserving {args.count} GPU(s): renting and waiting until all are running"
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        progress.add_task(text, total=None)
        data = api.post("/api/v1/gpu/instances/reserve", body, timeout=args.timeout)
    reservation = data["reservation"]
    show_reservation(reservation, args.json)
    if reservation["state"] != "confirmed":
        raise CliError(f"reservation {reservation['state']}: {reservation.get('reason')}")


def release_reservation(api: Api, args: argparse.Namespace) -> None:
    data = api.delete(f"/api/v1/gpu/reservations/{args.reservation_id}")
    show_reservation(data["reservation"], args.json)


COMMANDS: dict[str, Callable[[Api, argparse.Namespace], None]] = {
    "reserve": reserve_gpus,
    "release": release_reservation,
    "credits": show_credits,
    "transactions": show_transactions,
    "sessions": sessions_commands.show_sessions,
    "spending": show_spending,
    "list": list_offers,
    "create": create_instance,
    "destroy": destroy_instance,
    "rentals": show_rentals,
    "instance": show_instance,
    **proxy_commands.COMMANDS,
}


# -------------------------------------------------------------------------- parsing


def ranged_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low}..{high})")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def vram(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GB") from None
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range (0..10000 GB)")
    return value


def usd_amount(text: str) -> str:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not a USD amount (e.g. 0.50)") from None
    exponent = value.as_tuple().exponent
    if not value.is_finite() or value < 0 or (isinstance(exponent, int) and exponent < -6):
        raise argparse.ArgumentTypeError(f"{text!r} is not a USD amount (e.g. 0.50)")
    return text.strip()


def instance_uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an instance id (a UUID)") from None


def _json_flag() -> OneLineParser:
    """``--json`` after the command too; SUPPRESS keeps it from undoing ``--json list``."""
    parent = OneLineParser(add_help=False)
    parent.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    return parent


def _add_gpu_commands(sub: Any, common: OneLineParser) -> None:
    p = sub.add_parser("list", parents=[common], help="GPU offers, cheapest first")
    p.add_argument("provider", nargs="?", help="one marketplace (default: all)")
    p.add_argument("--min-vram", type=vram, metavar="GB", help="at least this much VRAM per GPU")
    p.add_argument("--max-price", type=usd_amount, metavar="USD", help="at most USD per hour")
    p.add_argument("--gpu", metavar="MODEL", help="GPU model contains this (e.g. 4090)")
    p.add_argument("--region", metavar="R", help="location contains this (e.g. US)")
    p.add_argument("--num-gpus", type=ranged_int(1, 64), metavar="N")
    p.add_argument("--limit", type=ranged_int(1, 500), metavar="N")
    c = sub.add_parser("create", parents=[common], help="rent an offer")
    c.add_argument("provider")
    c.add_argument("offer_id")
    c.add_argument("--image", help="container image")
    c.add_argument("--port", type=ranged_int(1, 65535), action="append", help="repeatable")
    c.add_argument("--idempotency-key", metavar="K", help="the same key never rents twice")
    c.add_argument("--wait", action="store_true", help="poll until running or failed")
    c.add_argument("--timeout", type=positive_float, default=600.0, metavar="S")
    c.add_argument("--interval", type=positive_float, default=2.0, metavar="S", help="poll")
    for name, text in (("destroy", "stop billing and destroy"), ("instance", "one instance")):
        d = sub.add_parser(name, parents=[common], help=f"{text} (PROVIDER INSTANCE_ID)")
        d.add_argument("provider")
        d.add_argument("instance_id", type=instance_uuid)
    sub.add_parser("rentals", parents=[common], help="your instances, newest first")
    r = sub.add_parser(
        "reserve", parents=[common], help="reserve N GPUs (1-16, not instances), all or none"
    )
    r.add_argument("count", type=ranged_int(1, 16), help="GPUs: the instances' GPUs add up to it")
    r.add_argument("--provider", help="one marketplace (default: all)")
    r.add_argument("--min-vram", type=vram, metavar="GB")
    r.add_argument("--max-price", type=usd_amount, metavar="USD")
    r.add_argument("--gpu", metavar="MODEL")
    r.add_argument("--image")
    r.add_argument("--timeout", type=positive_float, default=900.0, metavar="S")
    rel = sub.add_parser("release", parents=[common], help="release a reservation")
    rel.add_argument("reservation_id", type=instance_uuid)


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="GPU Proxy user CLI",
        epilog=(
            "environment: GPUPROXY_API_KEY (the API key, instead of -key), GPUPROXY_SERVER "
            "(instead of -server), GPUPROXY_GRPC (instead of --grpc-target). Tables on a "
            "terminal, tab-separated full values in a pipe, --json for scripts. Exit codes: "
            "0 done, 2 bad arguments or input (also a 400/422 from the server), 1 the "
            "operation failed."
        ),
    )
    parser.add_argument(
        "-server",
        "--server",
        default=os.environ.get("GPUPROXY_SERVER", "http://localhost:8080"),
        metavar="URL",
        help="server base URL (default $GPUPROXY_SERVER or http://localhost:8080)",
    )
    parser.add_argument(
        "-key",
        "--key",
        default=os.environ.get("GPUPROXY_API_KEY"),
        metavar="KEY",
        help="API key, gpx_... (default $GPUPROXY_API_KEY)",
    )
    parser.add_argument("-dv", "--developer-mode", action="store_true", help="same as -dm")
    parser.add_argument("-dm", "--debug-mode", action="store_true", help="requests on stderr")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--grpc", action="store_true", help="use the gRPC API instead of REST")
    parser.add_argument(
        "--grpc-target",
        default=os.environ.get("GPUPROXY_GRPC", "localhost:9090"),
        metavar="HOST:PORT",
        help="gRPC server (default $GPUPROXY_GRPC or localhost:9090)",
    )
    parser.add_argument("--grpc-tls", action="store_true", help="gRPC over TLS (system CAs)")
    parser.add_argument("--grpc-ca", metavar="FILE", help="gRPC over TLS trusting this CA")
    common = _json_flag()
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sub.add_parser("credits", parents=[common], help="your credit balance")
    t = sub.add_parser("transactions", parents=[common], help="your money movements")
    t.add_argument("--limit", type=int, default=20)
    t.add_argument("--before", type=int)
    sub.add_parser("spending", parents=[common], help="your spend per guard-rail window")
    s = sub.add_parser("sessions", parents=[common], help="your usage sessions, newest first")
    sessions_commands.add_paging(s)
    _add_gpu_commands(sub, common)
    proxy_commands.add_commands(sub, common)
    return parser


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.key:
        print(f"{PROG}: error: an API key is needed (-key or GPUPROXY_API_KEY)", file=sys.stderr)
        return 2
    debug = args.debug_mode or args.developer_mode
    try:
        api = _connect(args, debug)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        COMMANDS[args.command](api, args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if getattr(exc, "status", None) in BAD_INPUT else 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        _silence_stdout()
        return 1
    finally:
        api.close()
    return 0


def _connect(args: argparse.Namespace, debug: bool) -> Api:
    if not args.grpc:
        return Api(args.server, args.key, debug=debug)
    from interfaces.grpc.client import GrpcApi

    return GrpcApi(args.grpc_target, args.key, debug=debug, tls=args.grpc_tls, ca_file=args.grpc_ca)


if __name__ == "__main__":
    sys.exit(main())
