"""The io.net IO Cloud adapter (VMaaS): ``domain.marketplace.GpuProvider`` over httpx.

Follows ``shared/reference/provider-apis.md`` §2. Every path is appended to the origin
(``IONET_API_URL``, default ``https://api.io.solutions``) exactly as the real API has it, under
the VMaaS prefix ``/enterprise/v1/io-cloud/vmaas``; the key travels in the ``x-api-key`` header
of each request and is never logged nor put in an error message.

How the port maps onto VMaaS:

- ``search``: ``GET /hardware`` (``gpu`` and ``gpu_memory_min`` sent when asked; io.net has no
  price, GPU-count or location filter, so everything is re-checked with ``OfferQuery.accepts``).
  One offer per hardware row (hardware, GPU count, location); sold-out rows and rows without a
  location are skipped. The offer id encodes what a deploy needs (see ``encode_offer_id``).
  ``price`` is USD per hour for the whole VM; it becomes micro-USD exactly (``Decimal``, never
  ``float``), rounded up when io.net gives more than six decimals.
- ``rent``: ``GET /price`` (availability and the real prepaid cost, fees included), then
  ``POST /deploy`` with ``resource_private_name`` = ``RentRequest.label``. VMaaS may answer with
  an empty body: the new id is then found by listing ``/deployments`` and matching the label.
  A deploy whose answer was lost (502-504, timeout) is never blindly sent again: the label is
  looked up first, so one rent makes at most one deployment.
- ``status``: ``GET /deployment/{id}``, plus ``GET /deployment/{id}/vms`` for host and port
  once the deployment runs; it counts as ``running`` only when a VM reports ``running``.
- ``list_instances``: ``GET /deployments`` page by page (0-based as in the CaaS schema; a
  server that wants 1-based pages is detected), de-duplicated by id.
- ``destroy``: ``DELETE /deployment/{id}``; 404 means already gone (idempotent).

Retries: 429 (``Retry-After`` honoured when present), 502, 503, 504 and network errors, with
exponential backoff through an injectable ``sleep``, at most ``max_attempts`` tries in all; then
``ProviderRateLimitedError`` / ``ProviderUnavailableError``. 401/403 are auth failures and are
never retried.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import quote, unquote

import httpx

from domain.marketplace import (
    InstanceNotFoundError,
    InsufficientProviderCreditError,
    InvalidProviderRequestError,
    Offer,
    OfferQuery,
    OfferUnavailableError,
    ProviderAuthError,
    ProviderError,
    ProviderInstance,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    RentRequest,
)
from infrastructure.http_retry import Backoff, Retry, RetryPolicy, retry_after_seconds

__all__ = [
    "DEFAULT_API_URL",
    "PROVIDER_NAME",
    "VMAAS_PREFIX",
    "IoNetProvider",
    "OfferRef",
    "decode_offer_id",
    "encode_offer_id",
    "map_status",
    "usd_to_micros_ceil",
]

log = logging.getLogger(__name__)

PROVIDER_NAME: Final = "io.net"
DEFAULT_API_URL: Final = "https://api.io.solutions"
VMAAS_PREFIX: Final = "/enterprise/v1/io-cloud/vmaas"
RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
MICROS = Decimal(1_000_000)
MAX_PAGES = 1000  # a safety stop for a server whose pagination never ends

# §2.4: deployment statuses carry spaces; unknown words map to "unknown".
STATUS_MAP: Final[Mapping[str, str]] = {
    "deployment requested": "provisioning",
    "running": "running",
    "active": "running",  # seen in one docs example
    "termination requested": "stopping",
    "completed": "terminated",
    "destroyed": "terminated",
    "failed": "failed",
}
ACTIVE_STATES: Final = frozenset({"provisioning", "running", "unknown"})
CREDIT_WORDS = re.compile(r"credit|payment|balance|insufficient funds", re.IGNORECASE)
CAPACITY_WORDS = re.compile(r"available|sold out|capacity|no hardware", re.IGNORECASE)
SSH_TARGET = re.compile(r"@\[?([0-9A-Za-z.:-]+?)\]?(?:\s|$)")

Sleep = Callable[[float], Awaitable[None]]


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class OfferRef:
    """What ``POST /deploy`` needs from a hardware row."""

    hardware_id: int | str
    gpus: int
    location: str


def encode_offer_id(ref: OfferRef) -> str:
    """``<hardware>:<gpus>:<location>``, each part percent-encoded (``:`` never appears inside).

    An integer ``deploy_id`` is written as its digits; a string one that could be read as an
    integer (or starts with ``~``) gets a ``~`` prefix, so the type survives the round trip.
    """
    if isinstance(ref.hardware_id, int):
        hardware = str(ref.hardware_id)
    else:
        hardware = quote(ref.hardware_id, safe="")
        if _is_int_text(ref.hardware_id) or hardware.startswith("~") or not hardware:
            hardware = "~" + hardware
    return f"{hardware}:{ref.gpus}:{quote(ref.location, safe='')}"


def decode_offer_id(offer_id: str) -> OfferRef:
    """The inverse of ``encode_offer_id``; ``ValueError`` for anything else."""
    parts = offer_id.split(":")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise ValueError(f"not an io.net offer id: {offer_id[:80]!r}")
    hardware_text, gpus_text, location_text = parts
    if not gpus_text.isascii() or not gpus_text.isdigit() or not 1 <= int(gpus_text) <= 8:
        raise ValueError(f"not an io.net offer id (GPU count): {offer_id[:80]!r}")
    hardware: int | str
    if hardware_text.startswith("~"):
        hardware = unquote(hardware_text[1:])
    elif _is_int_text(hardware_text):
        hardware = int(hardware_text)
    else:
        hardware = unquote(hardware_text)
    return OfferRef(hardware, int(gpus_text), unquote(location_text))


def _is_int_text(text: str) -> bool:
    return text.isascii() and (text.isdigit() or (text[:1] == "-" and text[1:].isdigit()))


def usd_to_micros_ceil(value: object) -> int:
    """USD (a JSON number read as ``Decimal``, an int or a decimal string) → micro-USD.

    Exact for up to six decimals; beyond that rounded up (we never under-count a cost).
    Floats are refused: money never goes through binary floating point here.
    """
    if isinstance(value, float):
        raise ValueError("money must not be a float (read JSON numbers as Decimal)")
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise ValueError(f"not a decimal amount: {value!r}")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"not a decimal amount: {value!r}") from None
    if not amount.is_finite():
        raise ValueError(f"not a finite amount: {value!r}")
    return int((amount * MICROS).to_integral_value(rounding=ROUND_CEILING))


def map_status(raw: object) -> str:
    """An io.net deployment status (``"deployment requested"``...) → one of ``INSTANCE_STATES``."""
    if not isinstance(raw, str):
        return "unknown"
    word = " ".join(raw.replace("_", " ").split()).lower()
    return STATUS_MAP.get(word, "unknown")


def normalise_gpu_name(name: str) -> str:
    """``"NVIDIA GeForce RTX 4090"`` → ``"RTX 4090"`` (the names vast.ai and the catalog use)."""
    text = " ".join(name.split())
    for prefix in ("NVIDIA ", "GeForce "):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix) :]
    return text


def _epoch(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _detail_text(body: object, raw: str) -> str:
    """The message of an io.net error: ``{"detail": str}`` or a FastAPI 422 list, else the body."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        messages = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
                msg = str(item.get("msg", "invalid"))
                messages.append(f"{where}: {msg}" if where else msg)
            else:
                messages.append(str(item))
        return "; ".join(messages) or "validation error"
    if detail is not None:
        return json.dumps(detail, default=str)[:300]
    return raw.strip()[:300] or "no details"


class _AmbiguousError(ProviderUnavailableError):
    """A non-idempotent request may or may not have taken effect (its answer was lost)."""

    def __init__(self, provider: str, message: str, *, status: int | None = None) -> None:
        super().__init__(provider, message, status=status)
        self.message = message


# ----------------------------------------------------------------------------- the adapter


class IoNetProvider:
    """io.net VMaaS as a ``GpuProvider``.

    Pass either ``client`` (an ``httpx.AsyncClient`` you own and close) or nothing (one is
    made, optionally on ``transport``, and closed by ``aclose``). ``base_url`` is the origin;
    paths are always absolute from it, so an injected client's own ``base_url`` is unused.
    """

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_API_URL,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        duration_hours: int = 1,
        ssh_keys: Mapping[str, str] | None = None,
        vm_image_type: str = "general",
        port_whitelist: tuple[str, ...] = ("0.0.0.0/0",),
        check_availability: bool = True,
        find_attempts: int = 5,
        find_interval: float = 1.0,
        page_size: int = 100,
    ) -> None:
        if not api_key:
            raise ProviderAuthError(PROVIDER_NAME, "no API key (set IONET_API_KEY)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._api_key = api_key
        self._origin = base_url.rstrip("/")
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(transport=transport, timeout=timeout)
        self._timeout = timeout
        self._sleep = sleep
        self._retry = RetryPolicy(
            max_attempts,
            Backoff(backoff_base, backoff_max, jitter=None, retry_after_cap_s=max_retry_after),
            sleep=sleep,
            retry_statuses=RETRY_STATUSES,
        )
        self._duration_hours = duration_hours
        self._ssh_keys = dict(ssh_keys or {})
        self._vm_image_type = vm_image_type
        self._port_whitelist = list(port_whitelist)
        self._check_availability = check_availability
        self._find_attempts = max(1, find_attempts)
        self._find_interval = find_interval
        self._page_size = page_size
        self._page_base: int | None = None  # learnt on the first list

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> IoNetProvider:
        """``IONET_API_KEY`` (required) and ``IONET_API_URL`` (optional origin)."""
        env = os.environ if environ is None else environ
        base_url = env.get("IONET_API_URL", "").strip() or DEFAULT_API_URL
        return cls(env.get("IONET_API_KEY", "").strip(), base_url=base_url, **kwargs)

    def __repr__(self) -> str:  # never shows the key
        return f"IoNetProvider(base_url={self._origin!r})"

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    # ------------------------------------------------------------------ the port

    async def search(self, query: OfferQuery) -> list[Offer]:
        params: dict[str, str] = {}
        if query.gpu_model:
            params["gpu"] = query.gpu_model
        if query.min_vram_gb is not None and query.min_vram_gb > 0:
            params["gpu_memory_min"] = str(math.floor(query.min_vram_gb))
        body = await self._call("GET", "/hardware", params=params, op="search")
        rows = _dig(body, "data", "hardware")
        if not isinstance(rows, list):
            raise ProviderUnavailableError(PROVIDER_NAME, "hardware list: unexpected answer")
        offers = []
        for row in rows:
            offer = self._offer(row)
            if offer is not None and query.accepts(offer):
                offers.append(offer)
        offers.sort(key=lambda o: (o.price_per_hour, -o.vram_gb, o.offer_id))
        return offers[: max(0, query.limit)]

    async def rent(self, offer_id: str, request: RentRequest) -> ProviderInstance:
        try:
            ref = decode_offer_id(offer_id)
        except ValueError as exc:
            raise InvalidProviderRequestError(PROVIDER_NAME, str(exc)) from None
        price = await self._quote(ref) if self._check_availability else None
        payload: dict[str, Any] = {
            "resource_private_name": request.label,
            "duration_hours": self._duration_hours,
            "gpus_per_vm": ref.gpus,
            "hardware_id": ref.hardware_id,
            "location_ids": [ref.location],
            "vm_image_type": self._vm_image_type,
        }
        if self._ssh_keys:
            payload["ssh_keys"] = dict(self._ssh_keys)
        if request.ports:
            payload["network_services"] = {
                f"port-{port}": {"port": port, "protocol": "tcp", "whitelist": self._port_whitelist}
                for port in request.ports
            }
        outcome = await self._deploy(request.label, payload)
        if isinstance(outcome, ProviderInstance):
            return _with_price(outcome, price)
        deployment_id = _deployment_id(outcome)
        if deployment_id is not None:
            return ProviderInstance(
                PROVIDER_NAME,
                deployment_id,
                "provisioning",
                label=request.label,
                price_per_hour=price,
            )
        for attempt in range(self._find_attempts):
            if attempt:
                await self._sleep(self._find_interval)
            found = await self._find_by_label(request.label)
            if found is not None:
                return _with_price(found, price)
        raise ProviderError(
            PROVIDER_NAME,
            f"deployed {request.label!r} but no deployment carries that name yet; "
            "the reconciler will find it by label",
        )

    async def status(self, instance_id: str) -> ProviderInstance:
        data = await self._details(instance_id)
        raw = str(data.get("status", ""))
        state = map_status(raw)
        host: str | None = None
        port: int | None = None
        if state == "running":
            vms = await self._call(
                "GET",
                f"/deployment/{_seg(instance_id)}/vms",
                params={"page": "1", "page_size": "20"},
                op="status",
                not_found=InstanceNotFoundError,
            )
            workers = _dig(vms, "data", "workers")
            live = [
                w
                for w in (workers if isinstance(workers, list) else [])
                if isinstance(w, dict) and str(w.get("status", "")).lower() == "running"
            ]
            if live:
                host, port = _endpoint(live[0])
            else:
                state = "provisioning"  # the deployment runs but its VM is not up yet
        return ProviderInstance(
            PROVIDER_NAME,
            str(data.get("id") or instance_id),
            state,
            raw_status=raw,
            host=host,
            port=port,
            started_at=_epoch(data.get("started_at")),
        )

    async def list_instances(self) -> list[ProviderInstance]:
        return [_from_list_row(row) for row in await self._all_deployments()]

    async def destroy(self, instance_id: str) -> None:
        try:
            await self._call(
                "DELETE",
                f"/deployment/{_seg(instance_id)}",
                op="destroy",
                not_found=InstanceNotFoundError,
            )
        except InstanceNotFoundError:
            log.info("io.net destroy %s: already gone", instance_id)

    async def extend(self, instance_id: str, hours: int) -> ProviderInstance:
        """Buy ``hours`` more prepaid hours (VMaaS ends a deployment when its time runs out)."""
        body = await self._call(
            "POST",
            f"/deployment/{_seg(instance_id)}/extend",
            json_body={"duration_hours": hours},
            op="extend",
            not_found=InstanceNotFoundError,
            idempotent=False,
        )
        data = _dig(body, "data")
        if not isinstance(data, dict):
            return await self.status(instance_id)
        raw = str(data.get("status", ""))
        return ProviderInstance(
            PROVIDER_NAME,
            str(data.get("id") or instance_id),
            map_status(raw),
            raw_status=raw,
            started_at=_epoch(data.get("started_at")),
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # ------------------------------------------------------------------ steps

    def _offer(self, row: object) -> Offer | None:
        if not isinstance(row, dict) or row.get("sold_out") is True:
            return None
        deploy_id = row.get("deploy_id")
        name = row.get("name")
        gpus = row.get("num_cards")
        location = row.get("location")
        if (
            isinstance(deploy_id, bool)
            or not isinstance(deploy_id, int | str)
            or not isinstance(name, str)
            or isinstance(gpus, bool)
            or not isinstance(gpus, int)
            or not 1 <= gpus <= 8
            or not isinstance(location, str)
            or not location
        ):
            return None
        try:
            price = usd_to_micros_ceil(row.get("price"))
        except ValueError:
            return None
        if price < 0:
            return None
        vram = row.get("vram_per_card")
        vram_gb = (
            float(vram) if isinstance(vram, int | Decimal) and not isinstance(vram, bool) else 0.0
        )
        keys = ("id", "supplier", "vcpu", "memory", "storage", "interconnect", "nvlink")
        metadata: dict[str, Any] = {
            k: (float(v) if isinstance(v, Decimal) else v)
            for k in keys
            if (v := row.get(k)) is not None
        }
        metadata.update(
            hardware_id=deploy_id,
            hardware_name=name,
            billing="prepaid hours, first hour not refunded",
            duration_hours=self._duration_hours,
        )
        return Offer(
            provider=PROVIDER_NAME,
            offer_id=encode_offer_id(OfferRef(deploy_id, gpus, location)),
            gpu_model=normalise_gpu_name(name),
            num_gpus=gpus,
            vram_gb=vram_gb,
            price_per_hour=price,
            location=location,
            reliability=1.0,  # io.net publishes none per row
            metadata=metadata,
        )

    async def _quote(self, ref: OfferRef) -> int | None:
        """Check availability; the real hourly cost (fees included) in micro-USD, if given."""
        params = {
            "location_ids": json.dumps([ref.location]),
            "hardware_id": str(ref.hardware_id),
            "currency": "usdc",
            "duration_hours": str(self._duration_hours),
            "gpus_per_vm": str(ref.gpus),
            "replica_count": "1",
        }
        body = await self._call("GET", "/price", params=params, op="rent")
        data = _dig(body, "data")
        if not isinstance(data, dict):
            return None
        available = data.get("available_replica_count")
        if isinstance(available, list) and not any(
            isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in available
        ):
            raise OfferUnavailableError(
                PROVIDER_NAME, "Not enough available hardware (price quote)"
            )
        try:
            total = usd_to_micros_ceil(data.get("total_cost_usdc"))
        except ValueError:
            return None
        return -(-total // self._duration_hours)  # ceil: per hour of the prepaid duration

    async def _deploy(self, label: str, payload: dict[str, Any]) -> object:
        """``POST /deploy`` at most once per outcome: a lost answer is checked by label first.

        Returns the deploy answer's body, or the deployment found by label after a lost answer.
        """

        async def one_try(_: int) -> object:
            try:
                return await self._call(
                    "POST", "/deploy", json_body=payload, op="rent", idempotent=False
                )
            except _AmbiguousError as exc:
                log.warning("io.net deploy %s: answer lost (%s); looking it up", label, exc)
                found = await self._find_by_label(label)
                if found is not None:
                    return found
                error = ProviderUnavailableError(PROVIDER_NAME, exc.message, status=exc.status)
                return Retry(exc.message, lambda _: error)

        return await self._retry.run(one_try)

    async def _find_by_label(self, label: str) -> ProviderInstance | None:
        rows = [r for r in await self._all_deployments() if r.get("name") == label]
        if not rows:
            return None
        # Prefer a live one, then the newest.
        rows.sort(
            key=lambda r: (
                map_status(r.get("status")) in ACTIVE_STATES,
                _epoch(r.get("created_at")) or 0.0,
            ),
            reverse=True,
        )
        return _from_list_row(rows[0])

    async def _all_deployments(self) -> list[dict[str, Any]]:
        base = 0 if self._page_base is None else self._page_base
        try:
            return await self._pages(base)
        except InvalidProviderRequestError:
            if self._page_base is not None or base != 0:
                raise
            log.info("io.net /deployments refuses page=0; using 1-based pages")
            rows = await self._pages(1)
            self._page_base = 1
            return rows

    async def _pages(self, first: int) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        stale = 0  # full pages in a row that brought nothing new (a server ignoring ``page``)
        for page in range(first, first + MAX_PAGES):
            body = await self._call(
                "GET",
                "/deployments",
                params={"page": str(page), "page_size": str(self._page_size)},
                op="list",
            )
            rows = _dig(body, "data", "deployments")
            if not isinstance(rows, list):
                raise ProviderUnavailableError(PROVIDER_NAME, "deployment list: unexpected answer")
            before = len(seen)
            for row in rows:
                if isinstance(row, dict) and row.get("id") is not None:
                    seen[str(row["id"])] = row
            total = _dig(body, "data", "total")
            stale = stale + 1 if len(seen) == before else 0
            if len(rows) < self._page_size or stale >= 2:
                break
            if isinstance(total, int) and not isinstance(total, bool) and len(seen) >= total:
                break
        if self._page_base is None:
            self._page_base = first
        return list(seen.values())

    async def _details(self, instance_id: str) -> dict[str, Any]:
        body = await self._call(
            "GET", f"/deployment/{_seg(instance_id)}", op="status", not_found=InstanceNotFoundError
        )
        data = _dig(body, "data")
        if not isinstance(data, dict):
            raise ProviderUnavailableError(PROVIDER_NAME, "deployment details: unexpected answer")
        return data

    # ------------------------------------------------------------------ HTTP

    async def _call(
        self,
        method: str,
        path: str,
        *,
        op: str,
        params: Mapping[str, str] | None = None,
        json_body: object = None,
        not_found: type[ProviderError] = InstanceNotFoundError,
        idempotent: bool = True,
    ) -> object:
        """One API call with bounded retries; the parsed JSON body (``None`` when empty)."""
        url = f"{self._origin}{VMAAS_PREFIX}{path}"
        headers = {"x-api-key": self._api_key, "accept": "application/json"}

        async def one_try(_: int) -> object:
            try:
                response = await self._client.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=headers,
                    timeout=self._timeout,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # The request never reached the server: safe to send again.
                error = ProviderUnavailableError(PROVIDER_NAME, f"{op}: {type(exc).__name__}")
                return Retry(str(error), lambda _: error)
            except httpx.TransportError as exc:
                message = f"{op}: {type(exc).__name__}"
                if not idempotent:
                    raise _AmbiguousError(PROVIDER_NAME, message) from None
                unavailable = ProviderUnavailableError(PROVIDER_NAME, message)
                return Retry(str(unavailable), lambda _: unavailable)
            if response.status_code < 400:
                return _json(response)
            failed = _classify(response, op, not_found)
            if not self._retry.retries_status(response.status_code):
                raise failed
            if response.status_code != 429 and not idempotent:
                raise _AmbiguousError(
                    PROVIDER_NAME, f"{op}: HTTP {failed.status}", status=failed.status
                )
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            return Retry(str(failed), lambda _: failed, retry_after=retry_after)

        def waiting(attempt: int, retry: Retry, delay: float) -> None:
            log.warning(
                "io.net %s %s: %s; retry %d/%d in %.2fs",
                method,
                path,
                retry.reason,
                attempt,
                self._retry.max_attempts - 1,
                delay,
            )

        return await self._retry.run(one_try, on_retry=waiting)


def _json(response: httpx.Response) -> object:
    if not response.content.strip():
        return None
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError:
        raise ProviderUnavailableError(
            PROVIDER_NAME, f"answer is not JSON (HTTP {response.status_code})"
        ) from None


def _classify(response: httpx.Response, op: str, not_found: type[ProviderError]) -> ProviderError:
    status = response.status_code
    try:
        body: object = json.loads(response.content, parse_float=Decimal)
    except ValueError:
        body = None
    detail = _detail_text(body, response.text)
    message = f"{op}: HTTP {status}: {detail}"
    kind: type[ProviderError]
    if status == 401:
        kind = ProviderAuthError
    elif status == 402 or (400 <= status < 500 and status != 429 and CREDIT_WORDS.search(detail)):
        kind = InsufficientProviderCreditError
    elif status == 403:
        kind = ProviderAuthError
    elif status == 404:
        kind = OfferUnavailableError if op == "rent" else not_found
    elif status == 429:
        kind = ProviderRateLimitedError
    elif status >= 500:
        kind = ProviderUnavailableError
    elif status in {400, 409, 410} and CAPACITY_WORDS.search(detail):
        kind = OfferUnavailableError
    else:
        kind = InvalidProviderRequestError
    return kind(PROVIDER_NAME, message, status=status)


def _dig(body: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def _seg(instance_id: str) -> str:
    return quote(instance_id, safe="")


def _deployment_id(body: object) -> str | None:
    """The id a deploy answer may carry (CaaS style, or wrapped in ``data``)."""
    for candidate in (
        _dig(body, "deployment_id"),
        _dig(body, "data", "deployment_id"),
        _dig(body, "data", "id"),
    ):
        if isinstance(candidate, str | int) and not isinstance(candidate, bool) and str(candidate):
            return str(candidate)
    return None


def _from_list_row(row: dict[str, Any]) -> ProviderInstance:
    raw = str(row.get("status", ""))
    name = row.get("name")
    return ProviderInstance(
        PROVIDER_NAME,
        str(row.get("id")),
        map_status(raw),
        raw_status=raw,
        label=name if isinstance(name, str) else None,
    )


def _with_price(instance: ProviderInstance, price: int | None) -> ProviderInstance:
    if price is None:
        return instance
    return ProviderInstance(
        instance.provider,
        instance.instance_id,
        instance.status,
        raw_status=instance.raw_status,
        label=instance.label,
        host=instance.host,
        port=instance.port,
        price_per_hour=price,
        started_at=instance.started_at,
    )


def _endpoint(worker: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """Host and port of a VM: its first exposed network service, else its SSH target."""
    services = worker.get("network_services")
    if isinstance(services, dict):
        for service in services.values():
            if not isinstance(service, dict):
                continue
            ip, public_port = service.get("public_ip"), service.get("public_port")
            if isinstance(ip, str) and ip and isinstance(public_port, int):
                return ip, public_port
    ssh = worker.get("ssh_access")
    if isinstance(ssh, str) and (match := SSH_TARGET.search(ssh + " ")):
        return match.group(1), None
    return None, None
