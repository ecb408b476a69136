"""A fake io.net IO Cloud VMaaS API (an ASGI app on Litestar), per provider-apis.md §2 and §5.

Routes, all under ``/enterprise/v1/io-cloud/vmaas`` and all behind the ``x-api-key`` header:

- ``GET /hardware`` with the documented filters (``gpu``, ``regions``, ``gpu_family``,
  ``gpu_memory_min/max``, ``cpu_cores_min/max``, ``device_memory_min/max`` (MB),
  ``storage_min/max``, ``supplier``); ``sold_out`` from the remaining capacity of each row.
- ``GET /price`` (every parameter required; ``location_ids`` a JSON array).
- ``POST /deploy``: strict body (unknown fields → 422 ``extra_forbidden``); answers ``200``
  with an **empty body** unless ``deploy_returns_id`` is set.
- ``GET /deployments`` (``status``, ``page`` 0-based, ``page_size`` ≤ 100, newest first),
  ``GET /deployment/{id}``, ``GET /deployment/{id}/vms`` (``page`` 1-based),
  ``POST /deployment/{id}/extend``, ``DELETE /deployment/{id}`` with the refund rule.

Behaviour the real API does not document, decided here (§2.5, §2.6 and §5 "decided gaps"):

- bad or missing key: ``401 {"detail": "Invalid API key provided!"}`` (``auth_status`` may
  make it 403); short of credits: ``402 {"detail": "Insufficient IO Credits"}``; sold out:
  ``400 {"detail": "Not enough available hardware"}``; rate limit: ``429 {"detail": "Too Many
  Requests"}`` with an optional ``Retry-After``; unknown ids and paths: ``404 {"detail":
  "Not found"}``; validation: FastAPI's ``422 {"detail": [{"type", "loc", "msg", "input"}]}``.
- lifecycle on the injected clock: ``deployment requested`` for ``provision_seconds``, then
  ``running`` (VM ``deploying`` → ``running``), ``completed`` when the prepaid time is used up;
  ``DELETE`` makes it ``termination requested`` for ``termination_seconds`` and then
  ``destroyed`` (VM ``terminated``). A destroyed or completed id answers ``DELETE`` with 404.
- money: the hardware ``price`` is USD/hour for the VM; a deploy costs ``price * hours`` plus
  ``fee_percent`` (5 %), taken from ``balance`` (``None`` = unlimited). On ``DELETE`` the first
  hour is kept, the rest is charged to the exact active (running) time and the unused part of
  ``amount_paid`` is refunded to ``balance`` (and recorded in ``refunds``); a ``failed``
  deployment is refunded in full. The hardware ``deploy_id`` must match with its JSON type
  (``12`` is not ``"12"``) and the location by its code.

Fault injection: ``fail_next`` (N answers with a status, e.g. 429 bursts or 503 bursts,
optionally only on a path/method, optionally *after* doing the work: a lost answer),
``slow`` (delay answers), ``fail_deploy`` (the Nth deploy fails), ``never_running``,
``fail_provisioning``, ``sell_out``, ``list_lag`` (a new deployment shows in the list only
after that many lists), ``set_status`` (any raw status word).

Every request is recorded in ``requests`` (method, path, query, headers, parsed body).
Use in-process with ``httpx.ASGITransport(app=fake.app)`` or on a real loopback port with
``with fake.serve() as origin: ...`` (uvicorn in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import math
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

import httpx
from litestar import Litestar, Request, Response, delete, get, post
from litestar.exceptions import MethodNotAllowedException, NotFoundException

from tests.fake_servers.serving import serve_asgi

VMAAS = "/enterprise/v1/io-cloud/vmaas"
API_KEY = "test-ionet-key"
START = datetime(2026, 11, 26, 6, 20, tzinfo=UTC).timestamp()
SIX = Decimal("0.000001")
LOCATION_NAMES = {
    "US": "United States",
    "FI": "Finland",
    "AU": "Australia",
    "DE": "Germany",
    "NO": "Norway",
    "CA": "Canada",
}
DEPLOY_FIELDS = frozenset(
    {
        "resource_private_name",
        "duration_hours",
        "gpus_per_vm",
        "hardware_id",
        "location_ids",
        "node_pool_id",
        "ssh_keys",
        "github_ids",
        "vm_image_type",
        "network_services",
        "vms_qty",
    }
)
SSH_KEY_PREFIXES = ("ssh-rsa ", "ssh-ed25519 ", "ecdsa-sha2-")
TERMINAL = frozenset({"completed", "destroyed", "failed"})
Json = dict[str, Any]


class ManualClock:
    """An injectable clock: starts at 2026-11-26T06:20:00Z and moves only when told."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class HardwareRow:
    """One ``/hardware`` row: a hardware type with a GPU count at a location."""

    deploy_id: int | str
    name: str
    num_cards: int
    price: Decimal  # USD per hour for the whole VM
    location: str | None
    vram_per_card: int | None = None
    supplier: str = "internal"
    vcpu: int | None = 16
    memory: int | None = 62
    storage: int | None = 500
    interconnect: str | None = None
    nvlink: bool = False
    available: int = 4  # VMs that can still be deployed
    brand_name: str = "NVIDIA"

    @property
    def row_id(self) -> str:
        return f"{self.deploy_id}__{self.num_cards}_{self.location}"

    def as_json(self) -> Json:
        return {
            "id": self.row_id,
            "deploy_id": self.deploy_id,
            "name": self.name,
            "num_cards": self.num_cards,
            "supplier": self.supplier,
            "sold_out": self.available <= 0,
            "price": float(self.price),
            "vram_per_card": self.vram_per_card,
            "interconnect": self.interconnect,
            "nvlink": self.nvlink,
            "storage": self.storage,
            "vcpu": self.vcpu,
            "memory": self.memory,
            "location": self.location,
        }


def default_catalog() -> list[HardwareRow]:
    """A small realistic catalog (invented values, shapes as in §2.8)."""
    d = Decimal
    return [
        HardwareRow(12, "GeForce RTX 4090", 1, d("0.31"), "US", 24),
        HardwareRow(12, "GeForce RTX 4090", 2, d("0.62"), "US", 24, vcpu=32, memory=124),
        HardwareRow(12, "GeForce RTX 4090", 1, d("0.29"), "FI", 24, supplier="external"),
        HardwareRow(7, "GeForce RTX 3090", 1, d("0.1234567"), "DE", 24),
        HardwareRow(31, "A100 SXM4 80GB", 1, d("1.19"), "US", 80, interconnect="sxm4"),
        HardwareRow(
            "H100_sxm5x8",
            "H100 80GB SXM5",
            8,
            d("17.6"),
            "FI",
            80,
            supplier="external",
            vcpu=192,
            memory=1800,
            storage=3000,
            interconnect="sxm5",
            nvlink=True,
        ),
        HardwareRow(
            "B200_sxm6x8", "B200", 8, d("39.92"), "US", 180, interconnect="sxm6", nvlink=True
        ),
        HardwareRow(44, "L40S", 1, d("0.85"), "AU", 48, available=0),
        HardwareRow(14, "RTX A6000", 1, d("0.45"), None, 48),
    ]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, None when empty, the raw text when not JSON
    raw_body: bytes


@dataclass
class Fault:
    status: int
    remaining: int | None  # None: forever
    path: str | None = None  # substring of the path
    method: str | None = None
    retry_after: str | None = None
    detail: str | None = None
    after_processing: bool = False  # do the work, then answer with the error (a lost answer)

    def matches(self, method: str, path: str) -> bool:
        return (self.remaining is None or self.remaining > 0) and (
            (self.path is None or self.path in path)
            and (self.method is None or self.method.upper() == method)
        )


@dataclass
class Delay:
    seconds: float
    remaining: int | None
    path: str | None = None


@dataclass
class FakeDeployment:
    id: str
    name: str
    row: HardwareRow
    gpus_per_vm: int
    duration_hours: int
    created_at: float
    amount_paid: Decimal
    location: str
    ssh_keys: dict[str, str]
    github_ids: list[str]
    network_services: dict[str, Json]
    vm_image_type: str
    never_running: bool
    fails: bool
    device_id: str
    vm_id: str
    public_ip: str
    started_at: float | None = None
    finished_at: float | None = None
    destroyed_at: float | None = None
    forced_status: str | None = None
    released: bool = False
    status: str = "deployment requested"
    unlisted: int = 0  # how many more ``/deployments`` answers leave it out


class FakeIoNet:
    """State and behaviour of the fake; ``app`` is the ASGI application."""

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        clock: Callable[[], float] | None = None,
        hardware: list[HardwareRow] | None = None,
        balance: Decimal | str | int | None = None,
        provision_seconds: float = 120.0,
        termination_seconds: float = 0.0,
        fee_percent: Decimal | int = 5,
        seed: int = 4,
    ) -> None:
        self.api_key = api_key
        self.clock = clock or ManualClock()
        self.hardware = default_catalog() if hardware is None else hardware
        self.balance = None if balance is None else Decimal(str(balance))
        self.provision_seconds = provision_seconds
        self.termination_seconds = termination_seconds
        self.fee_percent = Decimal(fee_percent)
        self.auth_status = 401
        self.deploy_returns_id = False
        self.never_running = False
        self.fail_provisioning = False
        self.deployments_page_base = 0  # 1: refuse page=0 with a 422, like a 1-based API
        self.list_lag = 0  # new deployments show in /deployments only after this many lists
        self.deployments: dict[str, FakeDeployment] = {}
        self.refunds: dict[str, Decimal] = {}
        self.requests: list[RecordedRequest] = []
        self.deploy_attempts = 0
        self._failing_deploys: dict[int, tuple[int, str]] = {}
        self._faults: list[Fault] = []
        self._delays: list[Delay] = []
        self._random = random.Random(seed)
        self._lock = threading.RLock()
        self.app = create_app(self)

    # ------------------------------------------------------------------ test controls

    def fail_next(
        self,
        count: int | None = 1,
        status: int = 429,
        *,
        path: str | None = None,
        method: str | None = None,
        retry_after: str | None = None,
        detail: str | None = None,
        after_processing: bool = False,
    ) -> None:
        """The next ``count`` matching requests (``None``: all) answer ``status``."""
        with self._lock:
            self._faults.append(
                Fault(status, count, path, method, retry_after, detail, after_processing)
            )

    def slow(self, seconds: float, *, count: int | None = None, path: str | None = None) -> None:
        """Delay the next ``count`` matching answers (``None``: all) by ``seconds``."""
        with self._lock:
            self._delays.append(Delay(seconds, count, path))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            self._failing_deploys.clear()

    def fail_deploy(
        self, number: int, status: int = 400, detail: str = "Not enough available hardware"
    ) -> None:
        """Make the ``number``-th valid ``POST /deploy`` (1-based, counted from now on) fail."""
        with self._lock:
            self._failing_deploys[self.deploy_attempts + number] = (status, detail)

    def sell_out(self, deploy_id: int | str | None = None, location: str | None = None) -> None:
        with self._lock:
            for row in self.hardware:
                if (deploy_id is None or row.deploy_id == deploy_id) and (
                    location is None or row.location == location
                ):
                    row.available = 0

    def set_status(self, deployment_id: str, raw: str | None) -> None:
        """Force the raw status word of a deployment (``None``: back to the lifecycle)."""
        with self._lock:
            self.deployments[deployment_id].forced_status = raw

    def requests_to(self, suffix: str, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests whose path (after the VMaaS prefix) is ``suffix``."""
        return [
            r
            for r in self.requests
            if r.path == VMAAS + suffix and (method is None or r.method == method)
        ]

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.app)  # type: ignore[arg-type]

    def serve(self) -> contextlib.AbstractContextManager[str]:
        """Serve on a free loopback port in a thread; yields the origin ``http://127.0.0.1:N``."""
        return serve(self.app)

    def create_deployment(
        self,
        name: str,
        *,
        deploy_id: int | str = 12,
        gpus: int = 1,
        location: str = "US",
        duration_hours: int = 1,
    ) -> FakeDeployment:
        """Seed a deployment without going through the API (no credit check, no capacity use)."""
        with self._lock:
            row = self._row(deploy_id, gpus, location)
            if row is None:
                raise KeyError((deploy_id, gpus, location))
            cost = self._cost(row, duration_hours)["total_cost_usdc"]
            return self._create(
                name, row, gpus, duration_hours, cost, location, {}, [], {}, "general"
            )

    # ------------------------------------------------------------------ request plumbing

    async def handle(
        self,
        request: Request[Any, Any, Any],
        op: Callable[[RecordedRequest, Mapping[str, Any]], Response[Any]],
    ) -> Response[Any]:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query={k: request.query_params.getall(k) for k in request.query_params},
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            raw_body=raw,
        )
        with self._lock:
            self.requests.append(recorded)
            delay = self._take_delay(recorded.path)
            fault = self._take_fault(recorded.method, recorded.path)
        if delay:
            await asyncio.sleep(delay)
        if fault is not None and not fault.after_processing:
            return fault_response(fault)
        if recorded.headers.get("x-api-key") != self.api_key:
            return detail_response(self.auth_status, "Invalid API key provided!")
        with self._lock:
            response = op(recorded, request.path_params)
        if fault is not None:
            return fault_response(fault)
        return response

    def _take_delay(self, path: str) -> float:
        for item in self._delays:
            if (item.remaining is None or item.remaining > 0) and (
                item.path is None or item.path in path
            ):
                if item.remaining is not None:
                    item.remaining -= 1
                return item.seconds
        return 0.0

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self._faults:
            if fault.matches(method, path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    # ------------------------------------------------------------------ operations

    def op_hardware(self, req: RecordedRequest, _: Mapping[str, Any]) -> Response[Any]:
        errors: list[Json] = []
        q = req.query
        numbers = {
            name: number_param(errors, q, name)
            for name in (
                "gpu_memory_min",
                "gpu_memory_max",
                "cpu_cores_min",
                "cpu_cores_max",
                "device_memory_min",
                "device_memory_max",
                "storage_min",
                "storage_max",
            )
        }
        supplier = first(q, "supplier")
        if supplier is not None and supplier not in {"internal", "external"}:
            errors.append(
                error(
                    "enum",
                    ["query", "supplier"],
                    "Input should be 'internal' or 'external'",
                    supplier,
                )
            )
        if errors:
            return validation_response(errors)
        gpu = (first(q, "gpu") or "").strip().lower()
        regions = {
            r.strip().upper() for v in q.get("regions", []) for r in v.split(",") if r.strip()
        }
        families = [
            f.strip().lower() for v in q.get("gpu_family", []) for f in v.split(",") if f.strip()
        ]

        def within(value: float | None, low: float | None, high: float | None) -> bool:
            if low is None and high is None:
                return True
            if value is None:
                return False
            return (low is None or value >= low) and (high is None or value <= high)

        rows = [
            row.as_json()
            for row in self.hardware
            if (not gpu or gpu in row.name.lower())
            and (not regions or (row.location or "").upper() in regions)
            and (not families or any(f in row.name.lower() for f in families))
            and (supplier is None or row.supplier == supplier)
            and within(row.vram_per_card, numbers["gpu_memory_min"], numbers["gpu_memory_max"])
            and within(row.vcpu, numbers["cpu_cores_min"], numbers["cpu_cores_max"])
            and within(
                None if row.memory is None else row.memory * 1024,
                numbers["device_memory_min"],
                numbers["device_memory_max"],
            )
            and within(row.storage, numbers["storage_min"], numbers["storage_max"])
        ]
        return json_response({"data": {"hardware": rows}})

    def op_price(self, req: RecordedRequest, _: Mapping[str, Any]) -> Response[Any]:
        errors: list[Json] = []
        q = req.query
        locations = json_list_param(errors, q, "location_ids")
        hardware_id = first(q, "hardware_id")
        if hardware_id is None:
            errors.append(missing(["query", "hardware_id"]))
        currency = first(q, "currency")
        if currency is None:
            errors.append(missing(["query", "currency"]))
        elif currency not in {"usdc", "iocoin"}:
            errors.append(
                error("enum", ["query", "currency"], "Input should be 'usdc' or 'iocoin'", currency)
            )
        hours = int_param(errors, q, "duration_hours", required=True, ge=1)
        gpus = int_param(errors, q, "gpus_per_vm", required=True, ge=1)
        replicas = int_param(errors, q, "replica_count", required=True, ge=1)
        if errors:
            return validation_response(errors)
        if hours is None or gpus is None or replicas is None or locations is None:
            raise AssertionError("validated above")
        if hardware_id is None:
            raise AssertionError("validated above")
        rows = [self._row_by_text(hardware_id, gpus, str(loc)) for loc in locations]
        found = [row for row in rows if row is not None]
        if not found:
            return detail_response(404, "Not found")
        cost = self._cost(found[0], hours, replicas)
        return json_response(
            {
                "data": {
                    "replica_count": replicas,
                    "gpus_per_vm": gpus,
                    "available_replica_count": [
                        0 if r is None else max(0, r.available) for r in rows
                    ],
                    "discount": 0,
                    "ionet_fee": float(cost["ionet_fee"]),
                    "ionet_fee_percent": float(self.fee_percent),
                    "currency_conversion_fee": 0,
                    "currency_conversion_fee_percent": 0,
                    "total_cost_usdc": float(cost["total_cost_usdc"]),
                }
            }
        )

    def op_deploy(  # noqa: PLR0911 - one early answer per documented failure
        self, req: RecordedRequest, _: Mapping[str, Any]
    ) -> Response[Any]:
        errors = validate_deploy(req.body, req.raw_body)
        if errors:
            return validation_response(errors)
        body: Json = req.body
        self.deploy_attempts += 1
        failure = self._failing_deploys.pop(self.deploy_attempts, None)
        if failure is not None:
            return detail_response(*failure)
        if "node_pool_id" in body:
            return detail_response(404, "Not found")  # no private pools in the fake
        location = str(body["location_ids"][0])
        row = self._row(body["hardware_id"], body["gpus_per_vm"], location)
        if row is None:
            return detail_response(404, "Not found")
        if row.available <= 0:
            return detail_response(400, "Not enough available hardware")
        cost = self._cost(row, body["duration_hours"])["total_cost_usdc"]
        if self.balance is not None and self.balance < cost:
            return detail_response(402, "Insufficient IO Credits")
        if self.balance is not None:
            self.balance -= cost
        row.available -= 1
        dep = self._create(
            body["resource_private_name"],
            row,
            body["gpus_per_vm"],
            body["duration_hours"],
            cost,
            location,
            dict(body.get("ssh_keys") or {}),
            list(body.get("github_ids") or []),
            dict(body.get("network_services") or {}),
            body.get("vm_image_type", "general"),
        )
        if self.deploy_returns_id:
            return json_response({"status": "success", "deployment_id": dep.id})
        return Response(content=b"", status_code=200, media_type="application/json")

    def op_deployments(self, req: RecordedRequest, _: Mapping[str, Any]) -> Response[Any]:
        errors: list[Json] = []
        base = self.deployments_page_base
        page = int_param(errors, req.query, "page", default=base, ge=base)
        size = int_param(errors, req.query, "page_size", default=10, ge=1, le=100)
        if errors:
            return validation_response(errors)
        if page is None or size is None:
            raise AssertionError("validated above")
        wanted = first(req.query, "status")
        now = self.clock()
        items = sorted(self.deployments.values(), key=lambda d: (d.created_at, d.id), reverse=True)
        statuses = [self._status(d, now) for d in items]
        chosen = [
            d
            for d, s in zip(items, statuses, strict=True)
            if (wanted is None or s == wanted) and not d.unlisted
        ]
        for d in items:
            d.unlisted = max(0, d.unlisted - 1)
        start = (page - base) * size
        rows = [self._list_row(d, now) for d in chosen[start : start + size]]
        return json_response(
            {"data": {"deployments": rows, "total": len(chosen), "statuses": sorted(set(statuses))}}
        )

    def op_details(self, _: RecordedRequest, params: Mapping[str, Any]) -> Response[Any]:
        dep = self.deployments.get(str(params["deployment_id"]))
        if dep is None:
            return detail_response(404, "Not found")
        return json_response({"data": self._details(dep, self.clock())})

    def op_vms(self, req: RecordedRequest, params: Mapping[str, Any]) -> Response[Any]:
        errors: list[Json] = []
        page = int_param(errors, req.query, "page", default=1, ge=1)
        size = int_param(errors, req.query, "page_size", default=20, ge=1, le=100)
        if errors:
            return validation_response(errors)
        if page is None or size is None:
            raise AssertionError("validated above")
        dep = self.deployments.get(str(params["deployment_id"]))
        if dep is None:
            return detail_response(404, "Not found")
        workers = [self._worker(dep, self.clock())]
        return json_response(
            {"data": {"total": len(workers), "workers": workers[(page - 1) * size : page * size]}}
        )

    def op_extend(self, req: RecordedRequest, params: Mapping[str, Any]) -> Response[Any]:
        dep = self.deployments.get(str(params["deployment_id"]))
        if dep is None:
            return detail_response(404, "Not found")
        errors = validate_extend(req.body, req.raw_body)
        if errors:
            return validation_response(errors)
        now = self.clock()
        if self._status(dep, now) in TERMINAL | {"termination requested"}:
            return detail_response(400, "Deployment is not active")
        hours = int(req.body["duration_hours"])
        cost = self._cost(dep.row, hours)["total_cost_usdc"]
        if self.balance is not None and self.balance < cost:
            return detail_response(402, "Insufficient IO Credits")
        if self.balance is not None:
            self.balance -= cost
        dep.amount_paid += cost
        dep.duration_hours += hours
        return json_response({"data": self._details(dep, now)})

    def op_destroy(self, _: RecordedRequest, params: Mapping[str, Any]) -> Response[Any]:
        dep = self.deployments.get(str(params["deployment_id"]))
        now = self.clock()
        if dep is None or self._status(dep, now) in {
            "completed",
            "destroyed",
            "termination requested",
        }:
            return detail_response(404, "Not found")
        was = self._status(dep, now)
        if was == "failed":
            refund = dep.amount_paid
        else:
            active = 0.0 if dep.started_at is None else max(0.0, now - dep.started_at)
            hours = Decimal(dep.duration_hours)
            charged = min(hours, max(Decimal(1), Decimal(str(active)) / 3600))
            refund = (dep.amount_paid * (hours - charged) / hours).quantize(SIX, ROUND_DOWN)
        dep.destroyed_at = now
        dep.finished_at = now
        self.refunds[dep.id] = refund
        if self.balance is not None:
            self.balance += refund
        self._release(dep)
        return json_response({"status": "success", "deployment_id": dep.id})

    # ------------------------------------------------------------------ state

    def _row(self, hardware_id: object, gpus: object, location: str) -> HardwareRow | None:
        for row in self.hardware:
            if (
                type(row.deploy_id) is type(hardware_id)
                and row.deploy_id == hardware_id
                and row.num_cards == gpus
                and (row.location or "").upper() == location.upper()
            ):
                return row
        return None

    def _row_by_text(self, hardware_id: str, gpus: int, location: str) -> HardwareRow | None:
        for row in self.hardware:
            if (
                str(row.deploy_id) == hardware_id
                and row.num_cards == gpus
                and (row.location or "").upper() == location.upper()
            ):
                return row
        return None

    def _cost(self, row: HardwareRow, hours: int, replicas: int = 1) -> dict[str, Decimal]:
        base = row.price * hours * replicas
        fee = (base * self.fee_percent / 100).quantize(SIX, ROUND_HALF_UP)
        return {"ionet_fee": fee, "total_cost_usdc": (base + fee).quantize(SIX, ROUND_HALF_UP)}

    def _create(
        self,
        name: str,
        row: HardwareRow,
        gpus: int,
        hours: int,
        cost: Decimal,
        location: str,
        ssh_keys: dict[str, str],
        github_ids: list[str],
        services: dict[str, Json],
        image_type: str,
    ) -> FakeDeployment:
        n = len(self.deployments) + 1
        dep = FakeDeployment(
            id=str(uuid.UUID(int=self._random.getrandbits(128), version=4)),
            name=name,
            row=row,
            gpus_per_vm=gpus,
            duration_hours=hours,
            created_at=self.clock(),
            amount_paid=cost,
            location=location.upper(),
            ssh_keys=ssh_keys,
            github_ids=github_ids,
            network_services=services,
            vm_image_type=image_type,
            never_running=self.never_running,
            unlisted=self.list_lag,
            fails=self.fail_provisioning,
            device_id=str(uuid.UUID(int=self._random.getrandbits(128), version=4)),
            vm_id=f"vm-{7730 + n}",
            public_ip=f"203.0.113.{n % 250 + 1}",
        )
        self.deployments[dep.id] = dep
        return dep

    def _release(self, dep: FakeDeployment) -> None:
        if not dep.released:
            dep.released = True
            dep.row.available += 1

    def _status(self, dep: FakeDeployment, now: float) -> str:
        """Move ``dep`` along its lifecycle up to ``now``; its raw status word."""
        ready_at = dep.created_at + self.provision_seconds
        if dep.destroyed_at is not None:
            done = now >= dep.destroyed_at + self.termination_seconds
            dep.status = "destroyed" if done else "termination requested"
        elif dep.status in {"completed", "failed"}:
            pass
        elif now >= ready_at and dep.fails:
            dep.status, dep.finished_at = "failed", ready_at
            self._release(dep)
        elif now >= ready_at and not dep.never_running:
            dep.started_at = ready_at
            end = ready_at + dep.duration_hours * 3600
            if now >= end:
                dep.status, dep.finished_at = "completed", end
                self._release(dep)
            else:
                dep.status = "running"
        return dep.forced_status or dep.status

    def _minutes(self, dep: FakeDeployment, now: float) -> tuple[int, int, float]:
        total = dep.duration_hours * 60
        if dep.started_at is None:
            served = 0
        else:
            until = min(x for x in (now, dep.finished_at, dep.destroyed_at) if x is not None)
            served = min(total, max(0, math.floor((until - dep.started_at) / 60)))
        gone = dep.status in TERMINAL or dep.destroyed_at is not None
        remaining = 0 if gone else total - served
        return served, remaining, round(100 * served / total, 2)

    def _list_row(self, dep: FakeDeployment, now: float) -> Json:
        status = self._status(dep, now)
        served, remaining, percent = self._minutes(dep, now)
        return {
            "id": dep.id,
            "status": status,
            "name": dep.name,
            "completed_percent": percent,
            "hardware_quantity": dep.gpus_per_vm,
            "brand_name": dep.row.brand_name,
            "hardware_name": dep.row.name,
            "compute_minutes_served": served,
            "compute_minutes_remaining": remaining,
            "created_at": iso(dep.created_at),
            "served": f"{served // 60}h {served % 60}m",
            "remaining": f"{remaining // 60}h {remaining % 60}m",
        }

    def _details(self, dep: FakeDeployment, now: float) -> Json:
        status = self._status(dep, now)
        served, remaining, percent = self._minutes(dep, now)
        return {
            "id": dep.id,
            "status": status,
            "created_at": iso(dep.created_at),
            "started_at": iso(dep.started_at),
            "finished_at": iso(dep.finished_at),
            "amount_paid": float(dep.amount_paid),
            "completed_percent": percent,
            "total_gpus": dep.gpus_per_vm,
            "gpus_per_vm": dep.gpus_per_vm,
            "total_vms": 1,
            "hardware_name": dep.row.name,
            "hardware_id": dep.row.deploy_id,
            "locations": [
                {
                    "id": sorted(LOCATION_NAMES).index(dep.location) + 1
                    if dep.location in LOCATION_NAMES
                    else 0,
                    "iso2": dep.location,
                    "name": LOCATION_NAMES.get(dep.location, dep.location),
                }
            ],
            "brand_name": dep.row.brand_name,
            "compute_minutes_served": served,
            "compute_minutes_remaining": remaining,
            "ssh_keys": dep.ssh_keys,
            "github_ids": dep.github_ids,
        }

    def _worker(self, dep: FakeDeployment, now: float) -> Json:
        status = self._status(dep, now)
        vm_status = {
            "deployment requested": "deploying",
            "running": "running",
            "failed": "failed",
        }.get(dep.status, "terminated")
        if dep.forced_status is not None:
            vm_status = "running" if status == "running" else vm_status
        up = vm_status == "running"
        services = {
            name: {
                "port": spec.get("port"),
                "protocol": spec.get("protocol"),
                "whitelist": spec.get("whitelist"),
                "public_port": 30000 + i if up else None,
                "public_ip": dep.public_ip if up else None,
                "srv_record": None,
            }
            for i, (name, spec) in enumerate(dep.network_services.items())
        }
        events = [{"time": iso(dep.created_at), "message": "VM requested"}]
        if dep.started_at is not None:
            events.append({"time": iso(dep.started_at), "message": "VM is running"})
        return {
            "device_id": dep.device_id,
            "vm_id": dep.vm_id,
            "hardware": dep.row.name,
            "brand_name": dep.row.brand_name,
            "created_at": iso(dep.created_at),
            "uptime_percent": 100 if up else 0,
            "gpus_per_vm": dep.gpus_per_vm,
            "status": vm_status,
            "vm_events": events,
            "network_services": services,
            "ssh_access": f"ssh -p 22 ubuntu@{dep.public_ip}" if up else None,
            "is_external": dep.row.supplier == "external",
        }


# ----------------------------------------------------------------------------- the app


def create_app(fake: FakeIoNet) -> Litestar:
    """The Litestar application serving ``fake``."""

    @get(f"{VMAAS}/hardware")
    async def hardware(request: Request[Any, Any, Any]) -> Response[Any]:
        return await fake.handle(request, fake.op_hardware)

    @get(f"{VMAAS}/price")
    async def price(request: Request[Any, Any, Any]) -> Response[Any]:
        return await fake.handle(request, fake.op_price)

    @post(f"{VMAAS}/deploy", status_code=200)
    async def deploy(request: Request[Any, Any, Any]) -> Response[Any]:
        return await fake.handle(request, fake.op_deploy)

    @get(f"{VMAAS}/deployments")
    async def deployments(request: Request[Any, Any, Any]) -> Response[Any]:
        return await fake.handle(request, fake.op_deployments)

    @get(f"{VMAAS}/deployment/{{deployment_id:str}}")
    async def details(request: Request[Any, Any, Any]) -> Response[Any]:
        return await fake.handle(request, fake.op_details)

    @delete(f"{VMAAS}/deployment/{{deployment_id:str}}", status_code=200)
    async def destroy(request: Request[Any, Any, Any]) -> Response[Any]:
        return await fake.handle(request, fake.op_destroy)

    @get(f"{VMAAS}/deployment/{{deployment_id:str}}/vms")
    async def vms(request: Request[Any, Any, Any]) -> Response[Any]:
        return await fake.handle(request, fake.op_vms)

    @post(f"{VMAAS}/deployment/{{deployment_id:str}}/extend", status_code=200)
    async def extend(request: Request[Any, Any, Any]) -> Response[Any]:
        return await fake.handle(request, fake.op_extend)

    def not_found(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        status = getattr(exc, "status_code", 404)
        return detail_response(status, "Not Found" if status == 404 else "Method Not Allowed")

    return Litestar(
        [hardware, price, deploy, deployments, details, destroy, vms, extend],
        exception_handlers={NotFoundException: not_found, MethodNotAllowedException: not_found},
        openapi_config=None,
    )


def serve(app: Any, host: str = "127.0.0.1") -> contextlib.AbstractContextManager[str]:
    """Run ``app`` under uvicorn on a free port of ``host`` in a thread; yield its origin."""
    return serve_asgi(app, name="fake-ionet", host=host)


# ----------------------------------------------------------------------------- responses


def json_response(body: object, status: int = 200) -> Response[Any]:
    return Response(content=body, status_code=status, media_type="application/json")


def detail_response(
    status: int, detail: str, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(
        content={"detail": detail},
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def validation_response(errors: list[Json]) -> Response[Any]:
    return json_response({"detail": errors}, 422)


def fault_response(fault: Fault) -> Response[Any]:
    headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
    return detail_response(
        fault.status, fault.detail or http.HTTPStatus(fault.status).phrase, headers
    )


def iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# ----------------------------------------------------------------------------- validation


def error(kind: str, loc: list[Any], msg: str, value: Any, **ctx: Any) -> Json:
    item: Json = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx:
        item["ctx"] = ctx
    return item


def missing(loc: list[Any]) -> Json:
    return error("missing", loc, "Field required", None)


def first(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def number_param(errors: list[Json], query: Mapping[str, list[str]], name: str) -> float | None:
    raw = first(query, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        errors.append(
            error(
                "float_parsing",
                ["query", name],
                "Input should be a valid number, unable to parse string as a number",
                raw,
            )
        )
        return None
    if not math.isfinite(value):
        errors.append(
            error("finite_number", ["query", name], "Input should be a finite number", raw)
        )
        return None
    return value


def int_param(
    errors: list[Json],
    query: Mapping[str, list[str]],
    name: str,
    *,
    required: bool = False,
    default: int | None = None,
    ge: int | None = None,
    le: int | None = None,
) -> int | None:
    raw = first(query, name)
    if raw is None:
        if required:
            errors.append(missing(["query", name]))
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        errors.append(
            error(
                "int_parsing",
                ["query", name],
                "Input should be a valid integer, unable to parse string as an integer",
                raw,
            )
        )
        return None
    return check_range(errors, ["query", name], value, raw, ge, le)


def check_range(
    errors: list[Json], loc: list[Any], value: int, raw: Any, ge: int | None, le: int | None
) -> int | None:
    if ge is not None and value < ge:
        errors.append(
            error(
                "greater_than_equal",
                loc,
                f"Input should be greater than or equal to {ge}",
                raw,
                ge=ge,
            )
        )
        return None
    if le is not None and value > le:
        errors.append(
            error("less_than_equal", loc, f"Input should be less than or equal to {le}", raw, le=le)
        )
        return None
    return value


def json_list_param(
    errors: list[Json], query: Mapping[str, list[str]], name: str
) -> list[Any] | None:
    raw = first(query, name)
    if raw is None:
        errors.append(missing(["query", name]))
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        errors.append(error("json_invalid", ["query", name], "Invalid JSON", raw))
        return None
    if not isinstance(value, list) or not value:
        errors.append(
            error("list_type", ["query", name], "Input should be a non-empty JSON array", raw)
        )
        return None
    return value


def body_errors(body: Any, raw: bytes) -> list[Json] | None:
    """The errors of a body that is not a JSON object at all (``None`` when it is one)."""
    if isinstance(body, str) or (body is None and raw.strip()):
        return [
            error("json_invalid", ["body", 0], "JSON decode error", {}, error="Expecting value")
        ]
    if body is None:
        return [missing(["body"])]
    if not isinstance(body, dict):
        return [
            error(
                "model_attributes_type",
                ["body"],
                "Input should be a valid dictionary or object to extract fields from",
                body,
            )
        ]
    return None


def int_field(
    errors: list[Json],
    body: Json,
    name: str,
    *,
    required: bool,
    ge: int | None = None,
    le: int | None = None,
    parent: list[Any] | None = None,
) -> None:
    loc = [*(parent or ["body"]), name]
    if name not in body:
        if required:
            errors.append(missing(loc))
        return
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(error("int_type", loc, "Input should be a valid integer", value))
        return
    check_range(errors, loc, value, value, ge, le)


def validate_deploy(body: Any, raw: bytes) -> list[Json]:  # noqa: PLR0912 - one branch per field
    shape = body_errors(body, raw)
    if shape is not None:
        return shape
    errors: list[Json] = []
    for name in body:
        if name not in DEPLOY_FIELDS:
            errors.append(
                error(
                    "extra_forbidden", ["body", name], "Extra inputs are not permitted", body[name]
                )
            )
    name_value = body.get("resource_private_name")
    if "resource_private_name" not in body:
        errors.append(missing(["body", "resource_private_name"]))
    elif not isinstance(name_value, str):
        errors.append(
            error(
                "string_type",
                ["body", "resource_private_name"],
                "Input should be a valid string",
                name_value,
            )
        )
    elif not name_value:
        errors.append(
            error(
                "string_too_short",
                ["body", "resource_private_name"],
                "String should have at least 1 character",
                name_value,
                min_length=1,
            )
        )
    int_field(errors, body, "duration_hours", required=True, ge=1, le=8760)
    int_field(errors, body, "gpus_per_vm", required=True, ge=1, le=8)
    int_field(errors, body, "vms_qty", required=False, ge=1)
    if "hardware_id" not in body:
        errors.append(missing(["body", "hardware_id"]))
    elif isinstance(body["hardware_id"], bool) or not isinstance(body["hardware_id"], int | str):
        errors.append(
            error(
                "int_type",
                ["body", "hardware_id", "int"],
                "Input should be a valid integer",
                body["hardware_id"],
            )
        )
    if "location_ids" in body:
        ids = body["location_ids"]
        if not isinstance(ids, list):
            errors.append(
                error("list_type", ["body", "location_ids"], "Input should be a valid list", ids)
            )
        elif len(ids) != 1:
            kind, msg = (
                ("too_short", f"List should have at least 1 item after validation, not {len(ids)}")
                if not ids
                else (
                    "too_long",
                    f"List should have at most 1 item after validation, not {len(ids)}",
                )
            )
            errors.append(error(kind, ["body", "location_ids"], msg, ids))
        elif isinstance(ids[0], bool) or not isinstance(ids[0], int | str):
            errors.append(
                error(
                    "string_type",
                    ["body", "location_ids", 0, "str"],
                    "Input should be a valid string",
                    ids[0],
                )
            )
        if "node_pool_id" in body:
            errors.append(
                error(
                    "value_error",
                    ["body"],
                    "Value error, location_ids and node_pool_id are mutually exclusive",
                    body,
                )
            )
    elif "node_pool_id" not in body:
        errors.append(
            error(
                "value_error",
                ["body"],
                "Value error, location_ids or node_pool_id is required",
                body,
            )
        )
    keys = body.get("ssh_keys")
    if "ssh_keys" in body:
        if not isinstance(keys, dict):
            errors.append(
                error("dict_type", ["body", "ssh_keys"], "Input should be a valid dictionary", keys)
            )
        else:
            for key_name, key in keys.items():
                if not isinstance(key, str) or not key.startswith(SSH_KEY_PREFIXES):
                    errors.append(
                        error(
                            "value_error",
                            ["body", "ssh_keys", key_name],
                            "Value error, invalid SSH public key",
                            key,
                        )
                    )
    ids = body.get("github_ids")
    if "github_ids" in body and (
        not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
    ):
        errors.append(
            error(
                "list_type", ["body", "github_ids"], "Input should be a valid list of strings", ids
            )
        )
    image = body.get("vm_image_type", "general")
    if image not in {"general", "datascience"}:
        errors.append(
            error(
                "enum",
                ["body", "vm_image_type"],
                "Input should be 'general' or 'datascience'",
                image,
            )
        )
    if "network_services" in body:
        errors.extend(validate_services(body["network_services"]))
    return errors


def validate_services(services: Any) -> list[Json]:
    base = ["body", "network_services"]
    if not isinstance(services, dict):
        return [error("dict_type", base, "Input should be a valid dictionary", services)]
    errors: list[Json] = []
    for name, spec in services.items():
        loc = [*base, name]
        if not isinstance(spec, dict):
            errors.append(error("model_type", loc, "Input should be a valid dictionary", spec))
            continue
        for extra in set(spec) - {"port", "protocol", "whitelist"}:
            errors.append(
                error(
                    "extra_forbidden", [*loc, extra], "Extra inputs are not permitted", spec[extra]
                )
            )
        int_field(errors, spec, "port", required=True, ge=1, le=65535, parent=loc)
        if spec.get("protocol") not in {"tcp", "udp"}:
            errors.append(
                error(
                    "literal_error",
                    [*loc, "protocol"],
                    "Input should be 'tcp' or 'udp'",
                    spec.get("protocol"),
                )
            )
        whitelist = spec.get("whitelist")
        if (
            not isinstance(whitelist, list)
            or not whitelist
            or not all(isinstance(c, str) for c in whitelist)
        ):
            errors.append(
                error(
                    "too_short",
                    [*loc, "whitelist"],
                    "List should have at least 1 item after validation, not 0",
                    whitelist,
                )
            )
    return errors


def validate_extend(body: Any, raw: bytes) -> list[Json]:
    shape = body_errors(body, raw)
    if shape is not None:
        return shape
    errors = [
        error("extra_forbidden", ["body", name], "Extra inputs are not permitted", body[name])
        for name in body
        if name != "duration_hours"
    ]
    int_field(errors, body, "duration_hours", required=True)
    value = body.get("duration_hours")
    if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
        errors.append(
            error(
                "greater_than",
                ["body", "duration_hours"],
                "Input should be greater than 0",
                value,
                gt=0,
            )
        )
    return errors
