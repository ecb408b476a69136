"""A fake vast.ai API (``shared/reference/provider-apis.md`` §1 and the §5 checklist).

``FakeVastAi`` is a plain ASGI app. Run it in-process with ``httpx.ASGITransport(fake)`` or on
a real loopback port with ``with fake.serve() as url:`` (uvicorn in a thread), then point
``VASTAI_API_URL`` at ``url``. Every request is recorded in ``fake.requests``.

Routes (a trailing slash is optional on all of them):

- ``POST /api/v0/bundles/`` (and ``GET ?q=<json>``): offer search, no key needed (a wrong key
  is a 404 ``Invalid user key``). Filters ``{field: {op: value}}`` with ``eq``, ``neq``, ``gt``,
  ``gte``, ``lt``, ``lte``, ``in``, ``notin`` (several per field); ``order`` (``[[field,
  "asc"|"desc"], ...]``), ``limit`` (default 64), ``type`` (``on-demand`` / ``ondemand`` /
  ``reserved``, or ``bid``: prices from ``min_bid``), ``allocated_storage`` (GB; recomputes
  ``dph_total = dph_base + GB * storage_cost / 720``). ``geolocation`` filters match the row's
  trailing country code (or the whole string); ``verified`` matches ``verification ==
  "verified"``; ``reliability`` reads ``reliability2``. A row without the field never matches.
  Answer ``{"offers": [...]}``.
- ``PUT /api/v0/asks/{id}/``: rent. The first rent of an offer succeeds (``{"success": true,
  "new_contract": id, "instance_api_key": ...}``), later ones (and unknown ids) get
  ``no_such_ask``: 404/3603 by default, 410/3907 with ``gone_status=410``.
- ``GET /api/v0/instances/{id}/``: ``{"instances": obj}``; unknown or destroyed ids give
  ``{"instances": null}`` (or a 404 with ``missing_instance_status=404``). A new instance shows
  ``actual_status`` null, then ``loading`` after ``loading_after_s``, then ``running`` (with
  ``ports``) after ``running_after_s`` of the injected ``clock``.
- ``PUT /api/v0/instances/{id}/``: ``{"state": "stopped"|"running"}`` or ``{"label": ...}``.
- ``DELETE /api/v0/instances/{id}/`` → ``{"success": true}``; unknown → 404 ``not_found``.
  ``DELETE /api/v0/instances/`` with ``{"instance_ids": [...]}`` destroys several.
- ``GET /api/v1/instances/``: 25 a page (``limit`` ≤ 25, ≤ 0 → 5), opaque ``next_token`` /
  ``after_token`` (a bad one: 400 ``invalid_token``), ``order_by`` on one column,
  ``select_filters`` on stored columns only (``dph_total`` and other computed ones: 400).
- ``GET /api/v0/instances/``: 410 ``deprecated_endpoint`` (``deprecate_v0_list=False`` serves
  the legacy unpaged list instead).
- ``GET /api/v0/users/current/``: the account (``balance``, ``credit``).

Auth: ``Authorization: Bearer <key>`` or ``?api_key=<key>``; a missing or wrong key is
``auth_error_status`` (401, or 404 as vast answers some wrong keys) with ``{"success": false,
"error": "auth_error", "msg": "Invalid user key"}``.

Fault injection (all mutable between requests):

- ``fail_create(n, kind)``: the ``n``-th create (1-based, counting authorised, well-formed
  rent requests) fails: ``no_such_ask``; ``insufficient_credit`` (400
  ``{"error": "insufficient_credit"}``, a gap in the docs decided as the fact sheet suggests);
  ``error_with_contract`` (400 with ``new_contract``: the instance exists, stopped);
  ``server_error`` (500); ``lost_response`` (the instance is created, the answer is a 504).
- ``insufficient_credit = True``: every create fails for credit.
- ``never_running = True``: new instances stay ``loading``; ``end_status = "exited"`` (or
  ``"offline"``, ``"created"`` with an OCI error …) makes them end there instead of running.
- ``ignore_filters``: search filter fields the server silently ignores (as vast sometimes does).
- ``rate_limit(count)``: 429 ``text/plain`` ``API requests too frequent: endpoint
  threshold=N``, no ``Retry-After``; ``server_errors(count, status=503)``: 5xx bursts;
  ``slow(delay_s, count)``: late answers; ``inject(...)`` for anything else. Each takes
  ``method`` and ``path`` (a prefix) to aim at one endpoint, and ``count=None`` for "forever".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from tests.fake_servers.serving import serve_asgi

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_API_KEY = "test-vast-key-0123456789abcdef"
DEFAULT_SEARCH_LIMIT = 64
LIST_PAGE_MAX = 25
HOURS_PER_MONTH = 720
OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"})
SEARCH_TYPES = {
    "on-demand": "on-demand",
    "ondemand": "on-demand",
    "reserved": "reserved",
    "bid": "bid",
}
NON_FILTER_KEYS = frozenset({"limit", "order", "type", "allocated_storage", "disable_bundling"})
RUNTYPES = frozenset(
    {"ssh", "ssh_proxy", "ssh_direct", "ssh_direc", "jupyter", "jupyter_proxy"}
    | {"jupyter_direct", "jupyter_direc", "args"}
)
LIST_FILTERABLE = frozenset(
    {"id", "actual_status", "intended_status", "cur_state", "gpu_name", "label"}
    | {"verification", "machine_id", "num_gpus"}
)
# Per-endpoint thresholds vast prints in its 429 text (fact sheet §1.4).
THRESHOLDS = (
    ("PUT", "/api/v0/asks/", 4.5),
    ("DELETE", "/api/v0/instances/", 3.0),
    ("PUT", "/api/v0/instances/", 1.0),
    ("GET", "/api/v1/instances/", 1.0),
    ("GET", "/api/v0/instances/", 2.0),
    ("", "/api/v0/bundles/", 10.0),
)
CREATE_FAILURES = frozenset(
    {"no_such_ask", "insufficient_credit", "error_with_contract", "server_error", "lost_response"}
)


class ManualClock:
    """Epoch seconds that only move when a test says so (thread-safe enough for floats)."""

    def __init__(self, start: float = 1_764_150_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Injection:
    """One injected answer (or delay) for requests matching ``method`` / ``path`` (a prefix)."""

    status: int | None = None  # None: answer normally, after the delay
    count: int | None = 1  # None: forever
    delay_s: float = 0.0
    method: str | None = None
    path: str | None = None
    body: bytes = b""
    content_type: str = "application/json"

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or path.startswith(self.path)
        )


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


class _ApiError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, json.dumps(payload).encode())


def _fail(status: int, error: str, msg: str, **extra: Any) -> _ApiError:
    return _ApiError(_json_reply(status, {"success": False, "error": error, "msg": msg, **extra}))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def make_offer(
    offer_id: int,
    gpu_name: str,
    *,
    num_gpus: int = 1,
    gpu_ram: float = 24564,
    dph_base: float = 0.35,
    storage_cost: float = 0.28,
    dph_total: float | None = None,
    geolocation: str = "Ohio, US",
    reliability: float = 0.9962,
    verification: str = "verified",
    rentable: bool = True,
    min_bid: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A full offer row as vast returns it (invented values, real field names and units).

    ``dph_total`` defaults to ``dph_base`` plus 8 GB of storage (vast's default disk).
    """
    total = dph_total if dph_total is not None else dph_base + 8 * storage_cost / HOURS_PER_MONTH
    host = 90_000 + offer_id % 1000
    row: dict[str, Any] = {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": 775_000 + offer_id % 1000,
        "machine_id": 41_000 + offer_id % 1000,
        "host_id": host,
        "gpu_name": gpu_name,
        "num_gpus": num_gpus,
        "gpu_ram": gpu_ram,
        "gpu_total_ram": gpu_ram * num_gpus,
        "gpu_frac": 1.0,
        "gpu_arch": "nvidia",
        "cpu_name": "AMD EPYC 7543",
        "cpu_arch": "amd64",
        "cpu_cores": 64,
        "cpu_cores_effective": 8.0 * num_gpus,
        "cpu_ram": 257_700,
        "disk_space": 180.5,
        "disk_bw": 2100.0,
        "inet_up": 850.3,
        "inet_down": 910.7,
        "inet_up_cost": 0.003,
        "inet_down_cost": 0.003,
        "dph_base": dph_base,
        "dph_total": total,
        "min_bid": min_bid if min_bid is not None else round(dph_base * 0.6, 4),
        "storage_cost": storage_cost,
        "reliability": reliability,
        "reliability2": reliability,
        "verification": verification,
        "rentable": rentable,
        "rented": False,
        "external": False,
        "datacenter": False,
        "static_ip": True,
        "is_bid": False,
        "geolocation": geolocation,
        "cuda_max_good": 12.4,
        "driver_version": "550.54.15",
        "compute_cap": 890,
        "direct_port_count": 100,
        "duration": 2_590_000.0,
        "end_date": 1_795_000_000.0,
        "dlperf": 42.1,
        "score": 211.3,
        "hosting_type": 0,
        "public_ipaddr": f"198.51.100.{offer_id % 250 + 1}",
        "resource_type": "gpu",
        "search": {},
    }
    row.update(extra)
    _set_price_objects(row)
    return row


def _set_price_objects(row: dict[str, Any]) -> None:
    breakdown = {
        "gpuCostPerHour": row["dph_base"],
        "diskHour": row["dph_total"] - row["dph_base"],
        "totalHour": row["dph_total"],
        "discountTotalHour": 0,
        "discountedTotalPerHour": row["dph_total"],
    }
    row["search"] = dict(breakdown)
    row["instance"] = dict(breakdown)


def sample_offers() -> list[dict[str, Any]]:
    """A small, varied catalog: models, counts, VRAM (MB per GPU), prices and countries."""
    return [
        make_offer(18_723_001, "RTX 4090", dph_base=0.35, geolocation="Ohio, US"),
        make_offer(18_723_002, "RTX 4090", num_gpus=2, dph_base=0.69, geolocation="Oslo, NO"),
        make_offer(18_723_003, "RTX 3090", gpu_ram=24576, dph_base=0.19, geolocation="Berlin, DE"),
        make_offer(
            18_723_004,
            "A100 SXM4",
            gpu_ram=81920,
            dph_base=1.13,
            geolocation="Washington, US",
            reliability=0.998,
        ),
        make_offer(
            18_723_005,
            "H100 SXM",
            num_gpus=8,
            gpu_ram=81559,
            dph_base=17.6,
            geolocation="Texas, US",
        ),
        make_offer(18_723_006, "H100 SXM", gpu_ram=81559, dph_base=2.01, geolocation="Quebec, CA"),
        make_offer(18_723_007, "RTX A6000", gpu_ram=49140, dph_base=0.47, geolocation="Sweden, SE"),
        make_offer(18_723_008, "L40S", num_gpus=4, gpu_ram=46068, dph_base=3.2, geolocation="FR"),
        make_offer(18_723_009, "Tesla V100", gpu_ram=16384, dph_base=0.12, geolocation="Ohio, US"),
        make_offer(
            18_723_010,
            "RTX 4090",
            dph_base=0.31,
            geolocation="Taiwan, TW",
            verification="unverified",
        ),
        make_offer(18_723_011, "RTX 3090", gpu_ram=24576, dph_base=0.15, rentable=False),
    ]


def _country(geolocation: str) -> str:
    tail = geolocation.rsplit(",", 1)[-1].strip()
    return tail.upper()


def _field(row: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    if name == "verified" and "verified" not in row:
        return "verification" in row, row.get("verification") == "verified"
    if name == "reliability" and "reliability" not in row:
        return "reliability2" in row, row.get("reliability2")
    return name in row, row.get(name)


def _compare(value: Any, op: str, operand: Any) -> bool:  # noqa: PLR0911 - one branch per operator
    if op == "eq":
        return bool(value == operand)
    if op == "neq":
        return bool(value != operand)
    if op == "in":
        return value in operand
    if op == "notin":
        return value not in operand
    if not _number(value):
        return False
    if op == "gt":
        return bool(value > operand)
    if op == "gte":
        return bool(value >= operand)
    if op == "lt":
        return bool(value < operand)
    return bool(value <= operand)  # lte


def _check_operand(name: str, op: str, operand: Any) -> None:
    if op not in OPERATORS:
        raise _fail(400, "invalid_request", f"Unknown operator {op!r} for {name}")
    if op in {"in", "notin"} and not isinstance(operand, list):
        raise _fail(400, "invalid_request", f"{name}: {op} needs a list")
    if op in {"gt", "gte", "lt", "lte"} and not _number(operand):
        raise _fail(400, "invalid_request", f"{name}: {op} needs a number")


def _matches(row: Mapping[str, Any], name: str, op: str, operand: Any) -> bool:
    present, value = _field(row, name)
    if not present or value is None:
        return False
    if name == "geolocation" and isinstance(value, str):
        if op in {"eq", "neq", "in", "notin"}:
            wanted = operand if isinstance(operand, list) else [operand]
            keys = {value.lower(), _country(value).lower()}
            hit = any(isinstance(w, str) and w.lower() in keys for w in wanted)
            return hit if op in {"eq", "in"} else not hit
        return False
    return _compare(value, op, operand)


def _sorted(rows: list[dict[str, Any]], order: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """Stable multi-key sort; rows missing a key go last whatever the direction."""
    for name, descending in reversed(order):
        present = [r for r in rows if r.get(name) is not None]
        missing = [r for r in rows if r.get(name) is None]
        present.sort(key=lambda r: r[name], reverse=descending)
        rows = present + missing
    return rows


def _too_frequent(threshold: float) -> bytes:
    return f"API requests too frequent: endpoint threshold={threshold}".encode()


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise _fail(405, "method_not_allowed", "Method not allowed")


def _search_query(method: str, query: Mapping[str, list[str]], body: bytes) -> dict[str, Any]:
    """The flat ``q`` object: the POST body, or ``?q=<json>`` on GET."""
    raw: bytes | str = query.get("q", [""])[0] if method == "GET" else body
    try:
        q = json.loads(raw) if raw else {}
    except ValueError:
        raise _fail(400, "invalid_request", "Invalid json body") from None
    if not isinstance(q, dict):
        raise _fail(400, "invalid_request", "Invalid json body")
    return q


def _json_param(query: Mapping[str, list[str]], name: str) -> Any:
    raw = query.get(name, [None])[0]
    if raw is None or raw == "":
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # vast's own client sends strings unquoted


class FakeVastAi:
    """The fake vast.ai API; see the module docstring."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        offers: Iterable[Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
        loading_after_s: float = 2.0,
        running_after_s: float = 5.0,
        auth_error_status: int = 401,
        gone_status: int = 404,
        missing_instance_status: int = 200,
        deprecate_v0_list: bool = True,
        search_max_rows: int | None = None,
        first_instance_id: int = 31_415_900,
        balance: float = 250.0,
    ) -> None:
        self.api_key = api_key
        self.offers: dict[int, dict[str, Any]] = {}
        for row in sample_offers() if offers is None else offers:
            self.add_offer(row)
        self.clock = clock
        self.loading_after_s = loading_after_s
        self.running_after_s = running_after_s
        self.auth_error_status = auth_error_status
        self.gone_status = gone_status
        self.missing_instance_status = missing_instance_status
        self.deprecate_v0_list = deprecate_v0_list
        self.search_max_rows = search_max_rows
        self.balance = balance
        # fault injection
        self.create_failures: dict[int, str] = {}
        self.insufficient_credit = False
        self.never_running = False
        self.end_status = "running"
        self.ignore_filters: set[str] = set()
        self.injections: list[Injection] = []
        # state
        self.instances: dict[int, dict[str, Any]] = {}
        self.destroyed: dict[int, float] = {}
        self.requests: list[RecordedRequest] = []
        self.create_count = 0
        self._next_instance_id = first_instance_id
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------ test helpers

    def add_offer(self, row: Mapping[str, Any]) -> dict[str, Any]:
        stored = dict(row)
        self.offers[int(stored["id"])] = stored
        return stored

    def fail_create(self, n: int, kind: str = "no_such_ask") -> None:
        """Make the ``n``-th create (1-based) fail with ``kind`` (see the module docstring)."""
        if kind not in CREATE_FAILURES:
            raise ValueError(f"unknown create failure {kind!r}")
        self.create_failures[n] = kind

    def inject(self, injection: Injection) -> Injection:
        with self._lock:
            self.injections.append(injection)
        return injection

    def rate_limit(
        self,
        count: int | None = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        threshold: float | None = None,
    ) -> Injection:
        """429 in vast's plain-text form, without ``Retry-After``.

        The text names the threshold of the endpoint that was hit (or ``threshold``).
        """
        text = b"" if threshold is None else _too_frequent(threshold)
        return self.inject(
            Injection(429, count, method=method, path=path, body=text, content_type="text/plain")
        )

    def server_errors(
        self,
        count: int | None = 1,
        *,
        status: int = 503,
        method: str | None = None,
        path: str | None = None,
    ) -> Injection:
        body = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
        if status != 503:
            body = f"<html><body><h1>{status} Bad Gateway</h1></body></html>".encode()
        return self.inject(
            Injection(status, count, method=method, path=path, body=body, content_type="text/html")
        )

    def slow(
        self,
        delay_s: float,
        count: int | None = None,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> Injection:
        return self.inject(Injection(None, count, delay_s=delay_s, method=method, path=path))

    def clear_injections(self) -> None:
        with self._lock:
            self.injections.clear()

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def set_outcome(self, instance_id: int, actual_status: str) -> None:
        """Make one instance end in ``actual_status`` once its loading time is over."""
        self.instances[instance_id]["_outcome"] = actual_status

    def serve(self, host: str = "127.0.0.1") -> contextlib.AbstractContextManager[str]:
        """Serve this fake on a free loopback port (uvicorn in a thread); yields the base URL."""
        return serve_asgi(self, name="fake-vastai", host=host)

    # ------------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method = str(scope["method"]).upper()
        path = str(scope["path"])
        if not path.endswith("/"):
            path += "/"
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        with self._lock:
            self.requests.append(RecordedRequest(method, path, query, headers, body))
            injection = self._take_injection(method, path)
        if injection is not None and injection.delay_s > 0:
            await asyncio.sleep(injection.delay_s)
        if injection is not None and injection.status is not None:
            body = injection.body
            if injection.status == 429 and not body:
                body = _too_frequent(self._threshold(method, path))
            reply = Reply(injection.status, body, injection.content_type)
        else:
            with self._lock:
                try:
                    reply = self._route(method, path, query, headers, body)
                except _ApiError as exc:
                    reply = exc.reply
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (b"content-type", reply.content_type.encode()),
                    (b"content-length", str(len(reply.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})

    def _take_injection(self, method: str, path: str) -> Injection | None:
        for injection in self.injections:
            if injection.matches(method, path):
                if injection.count is not None:
                    injection.count -= 1
                    if injection.count <= 0:
                        self.injections.remove(injection)
                return injection
        return None

    @staticmethod
    def _threshold(method: str, path: str) -> float:
        for m, prefix, level in THRESHOLDS:
            if (not m or method == m) and path.startswith(prefix):
                return level
        return 2.0

    def _route(
        self,
        method: str,
        path: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        parts = [p for p in path.split("/") if p]
        if parts == ["api", "v0", "bundles"]:
            _allow(method, "GET", "POST")
            return self._search(method, query, headers, body)
        self._authorise(query, headers)
        handler: Callable[[], Reply] | None = None
        if parts[:3] == ["api", "v0", "asks"] and len(parts) == 4:
            _allow(method, "PUT")
            handler = lambda: self._rent(parts[3], body)  # noqa: E731
        elif parts == ["api", "v0", "instances"]:
            _allow(method, "GET", "DELETE")
            handler = self._legacy_list if method == "GET" else lambda: self._bulk_destroy(body)
        elif parts[:3] == ["api", "v0", "instances"] and len(parts) == 4:
            _allow(method, "GET", "PUT", "DELETE")
            handler = lambda: self._instance_route(method, parts[3], body)  # noqa: E731
        elif parts == ["api", "v1", "instances"]:
            _allow(method, "GET")
            handler = lambda: self._list_v1(query)  # noqa: E731
        elif parts == ["api", "v0", "users", "current"]:
            _allow(method, "GET")
            handler = self._account
        if handler is None:
            raise _fail(404, "not_found", f"No route for {method} {path}")
        return handler()

    def _instance_route(self, method: str, raw_id: str, body: bytes) -> Reply:
        instance_id = self._instance_id(raw_id)
        if method == "GET":
            return self._show(instance_id)
        if method == "PUT":
            return self._manage(instance_id, body)
        return self._destroy(instance_id)

    def _account(self) -> Reply:
        account = {"id": 4242, "email": "broker@example.com", "ssh_key": None}
        return _json_reply(200, {**account, "balance": self.balance, "credit": self.balance})

    # ------------------------------------------------------------------------ auth

    def _presented_key(self, query: Mapping[str, list[str]], headers: Mapping[str, str]) -> str:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return query.get("api_key", [""])[0]

    def _authorise(self, query: Mapping[str, list[str]], headers: Mapping[str, str]) -> None:
        if self._presented_key(query, headers) != self.api_key:
            raise _fail(self.auth_error_status, "auth_error", "Invalid user key")

    # ------------------------------------------------------------------------ search

    def _search(
        self,
        method: str,
        query: Mapping[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply:
        key = self._presented_key(query, headers)
        if key and key != self.api_key:
            raise _fail(404, "auth_error", "Invalid user key")
        q = _search_query(method, query, body)
        kind = SEARCH_TYPES.get(str(q.get("type", "on-demand")))
        if kind is None:
            raise _fail(400, "invalid_request", f"Unknown type {q.get('type')!r}")
        storage = q.get("allocated_storage")
        if storage is not None and (not _number(storage) or storage < 0):
            raise _fail(400, "invalid_request", "allocated_storage must be a number of GB")
        limit = q.get("limit", DEFAULT_SEARCH_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            raise _fail(400, "invalid_request", "limit must be a positive integer")
        if self.search_max_rows is not None:
            limit = min(limit, self.search_max_rows)
        order = self._search_order(q.get("order", [["score", "desc"]]))
        rows = [self._priced(row, kind, storage) for row in self.offers.values()]
        for name, conditions in q.items():
            if name in NON_FILTER_KEYS:
                continue
            if not isinstance(conditions, dict) or not conditions:
                raise _fail(400, "invalid_request", f"{name}: expected {{operator: value}}")
            for op, operand in conditions.items():
                _check_operand(name, op, operand)
                if name not in self.ignore_filters:
                    rows = [r for r in rows if _matches(r, name, op, operand)]
        return _json_reply(200, {"offers": _sorted(rows, order)[:limit]})

    @staticmethod
    def _search_order(order: Any) -> list[tuple[str, bool]]:
        if not isinstance(order, list):
            raise _fail(400, "invalid_request", "order must be a list of [field, direction]")
        keys: list[tuple[str, bool]] = []
        for item in order:
            if (
                not isinstance(item, list)
                or not item
                or not isinstance(item[0], str)
                or (len(item) > 1 and item[1] not in {"asc", "desc"})
            ):
                raise _fail(400, "invalid_request", f"bad order item {item!r}")
            keys.append((item[0], len(item) > 1 and item[1] == "desc"))
        return keys

    @staticmethod
    def _priced(row: Mapping[str, Any], kind: str, storage: Any) -> dict[str, Any]:
        priced = dict(row)
        base = priced["min_bid"] if kind == "bid" else priced["dph_base"]
        if storage is not None:
            priced["dph_total"] = base + storage * priced["storage_cost"] / HOURS_PER_MONTH
        elif kind == "bid":
            priced["dph_total"] = base + (row["dph_total"] - row["dph_base"])
        priced["is_bid"] = kind == "bid"
        _set_price_objects(priced)
        return priced

    # ------------------------------------------------------------------------ rent

    def _gone(self, ask_id: int) -> _ApiError:
        if self.gone_status == 410:
            msg = f"error 410/3907: no_such_ask Instance type {ask_id} is no longer available."
            return _fail(410, "no_such_ask", msg, ask_id=ask_id)
        msg = f"error 404/3603: no_such_ask Instance type by id {ask_id} is not available."
        return _fail(404, "invalid_args", msg, ask_id=ask_id)

    @staticmethod
    def _validate_rent(ask_id: int, request: Any) -> dict[str, Any]:
        def invalid(why: str) -> _ApiError:
            return _fail(400, "invalid_args", f"error 400/3467: Invalid args: {why}", ask_id=ask_id)

        if not isinstance(request, dict):
            raise _fail(400, "invalid_request", "Invalid json body")
        image = request.get("image")
        if not request.get("template_hash_id") and (not isinstance(image, str) or not image):
            raise invalid("image is required")
        if isinstance(image, str) and len(image) > 1024:
            raise invalid("image is too long")
        disk = request.get("disk", 8)
        if not _number(disk) or disk < 8:
            raise invalid("disk must be at least 8 GB")
        label = request.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > 256):
            raise invalid("label must be a string of at most 256 characters")
        env = request.get("env", {})
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= 256 for k, v in env.items()
        ):
            raise invalid("env must be an object of strings (values at most 256 characters)")
        runtype = request.get("runtype", "ssh")
        if not isinstance(runtype, str) or not set(runtype.split()) <= RUNTYPES:
            raise invalid(f"unknown runtype {runtype!r}")
        scripts = [request.get("onstart"), request.get("args_str"), *(request.get("args") or [])]
        if sum(len(str(s)) for s in scripts if s) > 4096:
            raise invalid("args, args_str and onstart together exceed 4096 characters")
        price = request.get("price")
        if price is not None and (not _number(price) or not 0.001 <= price <= 128):
            raise _fail(
                400, "invalid_price", "error 400: price must be 0.001 to 128", ask_id=ask_id
            )
        return request

    def _rent(self, raw_id: str, body: bytes) -> Reply:
        if not raw_id.isdigit():
            raise _fail(400, "invalid_args", f"invalid ask id {raw_id!r}")
        ask_id = int(raw_id)
        try:
            request = json.loads(body) if body else None
        except ValueError:
            raise _fail(400, "invalid_request", "Invalid json body") from None
        request = self._validate_rent(ask_id, request)
        self.create_count += 1
        failure = self.create_failures.get(self.create_count)
        offer = self.offers.get(ask_id)
        if offer is None or not offer.get("rentable") or offer.get("rented"):
            raise self._gone(ask_id)
        if failure == "no_such_ask":
            raise self._gone(ask_id)
        if self.insufficient_credit or failure == "insufficient_credit":
            raise _fail(
                400,
                "insufficient_credit",
                "Insufficient credit: add credit to your account to rent this instance.",
                ask_id=ask_id,
            )
        if failure == "server_error":
            raise _fail(500, "server_error", "Internal server error")
        instance = self._create_instance(offer, request)
        offer["rentable"], offer["rented"] = False, True
        if failure == "error_with_contract":
            instance["_stopped"] = True
            raise _fail(
                400,
                "start_failed",
                "error 400: the instance could not be started and was created stopped.",
                ask_id=ask_id,
                new_contract=instance["id"],
            )
        if failure == "lost_response":
            raise _ApiError(
                Reply(504, b"<html><body>504 Gateway Time-out</body></html>", "text/html")
            )
        return _json_reply(
            200,
            {
                "success": True,
                "new_contract": instance["id"],
                "instance_api_key": f"{instance['id']:x}" * 4,
            },
        )

    def _create_instance(
        self, offer: Mapping[str, Any], request: Mapping[str, Any]
    ) -> dict[str, Any]:
        instance_id = self._next_instance_id
        self._next_instance_id += 1
        seq = instance_id % 1000
        env: dict[str, str] = dict(request.get("env") or {})
        disk = float(request.get("disk", 8))
        dph_total = offer["dph_base"] + disk * offer["storage_cost"] / HOURS_PER_MONTH
        outcome = "loading" if self.never_running else self.end_status
        instance: dict[str, Any] = {
            "id": instance_id,
            "label": request.get("label") or "",
            "image_uuid": request.get("image"),
            "image_runtype": request.get("runtype", "ssh"),
            "image_args": request.get("args") or [],
            "onstart": request.get("onstart") or "",
            "extra_env": [[k, v] for k, v in env.items()],
            "template_id": None,
            "template_hash_id": request.get("template_hash_id"),
            "machine_id": offer["machine_id"],
            "host_id": offer["host_id"],
            "bundle_id": offer["bundle_id"],
            "ssh_host": f"ssh{seq % 9 + 1}.vast.ai",
            "ssh_port": 20_000 + seq * 10,
            "ssh_idx": str(seq % 9 + 1),
            "public_ipaddr": offer.get("public_ipaddr"),
            "local_ipaddrs": "10.0.0.2\n",
            "direct_port_start": 40_000 + seq * 10,
            "direct_port_end": 40_009 + seq * 10,
            "direct_port_count": 10,
            "start_date": self.clock(),
            "end_date": offer.get("end_date"),
            "gpu_name": offer["gpu_name"],
            "num_gpus": offer["num_gpus"],
            "gpu_ram": offer["gpu_ram"],
            "gpu_totalram": offer["gpu_ram"] * offer["num_gpus"],
            "gpu_frac": 1.0,
            "cpu_cores": offer["cpu_cores"],
            "cpu_cores_effective": offer["cpu_cores_effective"],
            "cpu_ram": offer["cpu_ram"],
            "disk_space": disk,
            "geolocation": offer["geolocation"],
            "verification": offer["verification"],
            "reliability2": offer["reliability2"],
            "dph_base": offer["dph_base"],
            "dph_total": dph_total,
            "storage_cost": offer["storage_cost"],
            "storage_total_cost": disk * offer["storage_cost"] / HOURS_PER_MONTH,
            "min_bid": offer["min_bid"],
            "is_bid": request.get("price") is not None,
            "hosting_type": offer["hosting_type"],
            "static_ip": offer["static_ip"],
            "external": offer["external"],
            "country_code": _country(str(offer["geolocation"])),
            "jupyter_token": f"{instance_id:x}" * 2,
            "_created_at": self.clock(),
            "_outcome": outcome,
            "_stopped": False,
        }
        self.instances[instance_id] = instance
        return instance

    # ------------------------------------------------------------------------ instances

    @staticmethod
    def _instance_id(raw: str) -> int:
        if not raw.isdigit():
            raise _fail(400, "invalid_args", "invalid instance_id")
        return int(raw)

    def _view(self, instance: Mapping[str, Any]) -> dict[str, Any]:
        """The instance as vast shows it now (status from the clock)."""
        view = {k: v for k, v in instance.items() if not k.startswith("_")}
        elapsed = self.clock() - instance["_created_at"]
        actual: str | None
        msg: str | None
        ports: dict[str, Any] | None = None
        intended = cur = nxt = "running"
        if instance["_stopped"]:
            actual, msg = "stopped", "Instance stopped."
            intended = cur = nxt = "stopped"
        elif elapsed < self.loading_after_s:
            actual, msg = None, None
        elif elapsed < self.running_after_s or instance["_outcome"] == "loading":
            actual, msg = "loading", "Pulling image..."
        else:
            actual = instance["_outcome"]
            if actual == "running":
                msg = f"success, running {instance['image_uuid']}/{instance['image_runtype']}"
                ports = self._ports(instance)
            elif actual == "created":
                msg = "Error response from daemon: OCI runtime create failed: unable to start"
            else:
                msg = f"Instance {actual}."
        started = instance["start_date"]
        view.update(
            actual_status=actual,
            intended_status=intended,
            cur_state=cur,
            next_state=nxt,
            status_msg=msg,
            ports=ports,
            duration=max(0.0, self.clock() - started),
            uptime_mins=max(0.0, (elapsed - self.running_after_s) / 60) if ports else 0.0,
            client_run_time=max(0.0, elapsed),
            host_run_time=max(0.0, elapsed),
            credit_balance=self.balance,
            gpu_util=37.5 if ports else 0.0,
        )
        return view

    @staticmethod
    def _ports(instance: Mapping[str, Any]) -> dict[str, Any]:
        start = int(instance["direct_port_start"])
        keys = ["22/tcp"]
        for key, _value in instance["extra_env"]:
            parts = str(key).split()
            if len(parts) == 2 and parts[0] == "-p":
                number, _, proto = parts[1].rsplit(":", 1)[-1].partition("/")
                keys.append(f"{number}/{proto or 'tcp'}")
        mapping: dict[str, Any] = {}
        for offset, key in enumerate(keys):
            host_port = str(start + offset)
            mapping[key] = [
                {"HostIp": "0.0.0.0", "HostPort": host_port},  # noqa: S104 - docker's own words
                {"HostIp": "::", "HostPort": host_port},
            ]
        return mapping

    def _show(self, instance_id: int) -> Reply:
        instance = self.instances.get(instance_id)
        if instance is None:
            if self.missing_instance_status == 404:
                raise _fail(404, "no_such_instance", f"Instance {instance_id} not found.")
            return _json_reply(200, {"instances": None})
        return _json_reply(200, {"instances": self._view(instance)})

    def _manage(self, instance_id: int, body: bytes) -> Reply:
        instance = self.instances.get(instance_id)
        if instance is None:
            raise _fail(404, "no_such_instance", f"Instance {instance_id} not found.")
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            raise _fail(400, "invalid_request", "Invalid json body") from None
        if not isinstance(request, dict):
            raise _fail(400, "invalid_request", "Invalid json body")
        if "label" in request:
            label = request["label"]
            if not isinstance(label, str) or len(label) > 256:
                raise _fail(400, "label_too_long", "Label must be at most 256 characters.")
            instance["label"] = label
        state = request.get("state")
        if state == "stopped":
            instance["_stopped"] = True
        elif state == "running":
            if instance["_stopped"]:
                instance["_stopped"] = False
                instance["_created_at"] = self.clock() - self.running_after_s
        elif state is not None:
            raise _fail(400, "invalid_args", f"Unknown state {state!r}")
        return _json_reply(200, {"success": True})

    def _destroy(self, instance_id: int) -> Reply:
        if self.instances.pop(instance_id, None) is None:
            raise _fail(404, "not_found", "Instance not found")
        self.destroyed[instance_id] = self.clock()
        return _json_reply(200, {"success": True})

    def _bulk_destroy(self, body: bytes) -> Reply:
        try:
            request = json.loads(body) if body else {}
        except ValueError:
            raise _fail(400, "invalid_request", "Invalid json body") from None
        ids = request.get("instance_ids") if isinstance(request, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise _fail(400, "invalid_args", "instance_ids must be a list of ids")
        for instance_id in ids:
            if self.instances.pop(instance_id, None) is not None:
                self.destroyed[instance_id] = self.clock()
        return _json_reply(200, {"success": True})

    def _legacy_list(self) -> Reply:
        if self.deprecate_v0_list:
            raise _fail(410, "deprecated_endpoint", "Use /api/v1/instances/ instead")
        rows = [self._view(i) for _, i in sorted(self.instances.items())]
        return _json_reply(200, {"instances_found": len(rows), "instances": rows})

    # ------------------------------------------------------------------------ v1 list

    @staticmethod
    def _token(key: Any, instance_id: int) -> str:
        raw = json.dumps([key, instance_id]).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def _untoken(token: Any) -> tuple[Any, int]:
        if not isinstance(token, str) or not token:
            raise _fail(400, "invalid_token", "Invalid after_token")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            key, instance_id = json.loads(raw)
        except (binascii.Error, ValueError, TypeError):
            raise _fail(400, "invalid_token", "Invalid after_token") from None
        if not isinstance(instance_id, int):
            raise _fail(400, "invalid_token", "Invalid after_token")
        return key, instance_id

    def _list_v1(self, query: Mapping[str, list[str]]) -> Reply:
        limit = _json_param(query, "limit")
        if limit is None:
            limit = LIST_PAGE_MAX
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise _fail(400, "invalid_args", "limit must be an integer")
        limit = 5 if limit <= 0 else min(limit, LIST_PAGE_MAX)
        order_by = _json_param(query, "order_by") or [{"col": "id", "dir": "asc"}]
        if (
            not isinstance(order_by, list)
            or len(order_by) != 1
            or not isinstance(order_by[0], dict)
            or order_by[0].get("dir", "asc") not in {"asc", "desc"}
            or not isinstance(order_by[0].get("col"), str)
        ):
            raise _fail(400, "invalid_args", "order_by: one {col, dir} item is supported")
        column, descending = order_by[0]["col"], order_by[0].get("dir") == "desc"
        filters = _json_param(query, "select_filters") or {}
        if not isinstance(filters, dict):
            raise _fail(400, "invalid_args", "select_filters must be an object")
        for name, conditions in filters.items():
            if name not in LIST_FILTERABLE:
                raise _fail(400, "invalid_args", f"Column {name} is not filterable")
            if not isinstance(conditions, dict):
                raise _fail(400, "invalid_args", f"{name}: expected {{operator: value}}")
            for op, operand in conditions.items():
                _check_operand(name, op, operand)
        everything = [self._view(i) for i in self.instances.values()]
        rows = [
            r
            for r in everything
            if all(_compare(r.get(n), op, v) for n, c in filters.items() for op, v in c.items())
        ]

        def sort_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
            value = row.get(column)
            if value is None:
                return (0, 0, row["id"])
            if _number(value):
                return (1, value, row["id"])
            return (2, str(value), row["id"])

        rows.sort(key=sort_key, reverse=descending)
        after = _json_param(query, "after_token")
        if after is not None:
            last_key, last_id = self._untoken(after)
            marker = sort_key({column: last_key, "id": last_id})
            rows = [
                r for r in rows if (sort_key(r) < marker if descending else sort_key(r) > marker)
            ]
        page = rows[:limit]
        more = len(rows) > limit
        label_counts: dict[str, int] = {}
        for row in everything:
            label_counts[row.get("label") or ""] = label_counts.get(row.get("label") or "", 0) + 1
        next_token = self._token(page[-1].get(column), page[-1]["id"]) if more and page else None
        return _json_reply(
            200,
            {
                "success": True,
                "instances_found": len(page),
                "total_instances": len(everything),
                "label_counts": label_counts,
                "next_token": next_token,
                "instances": page,
            },
        )


@contextlib.contextmanager
def running_fake_vastai(fake: FakeVastAi | None = None) -> Iterator[tuple[str, FakeVastAi]]:
    """Start ``fake`` (or a new one) on a loopback port; yields ``(base_url, fake)``."""
    server = fake if fake is not None else FakeVastAi()
    with server.serve() as url:
        yield url, server


__all__ = [
    "DEFAULT_API_KEY",
    "FakeVastAi",
    "Injection",
    "ManualClock",
    "RecordedRequest",
    "make_offer",
    "running_fake_vastai",
    "sample_offers",
]
