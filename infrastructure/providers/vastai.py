"""The vast.ai marketplace adapter (``domain.marketplace.GpuProvider`` on httpx).

Follows ``shared/reference/provider-apis.md`` §1. Every path is appended to the origin
(``VASTAI_API_URL``, default ``https://console.vast.ai``) exactly as the real API has it:

- search: ``POST /api/v0/bundles/`` with the flat ``q`` object (``{field: {op: value}}`` plus
  ``order``, ``limit``, ``type``, ``allocated_storage``); filters the API cannot express are
  applied locally, and every row is re-checked with ``OfferQuery.accepts``;
- rent: ``PUT /api/v0/asks/{offer_id}/`` (``new_contract`` is the instance id);
- status: ``GET /api/v0/instances/{id}/?owner=me`` (``{"instances": obj | null}``);
- list: ``GET /api/v1/instances/`` following ``next_token`` (25 rows a page);
- destroy: ``DELETE /api/v0/instances/{id}/`` with ``{}`` (an unknown instance is fine).

Units: ``gpu_ram`` is MB per GPU (GB = MB / 1000, the CLI's convention, so the server filter
``gpu_ram >= GB * 1000`` and the local re-check agree); ``dph_total`` is USD/hour for the whole
offer, turned into integer micro-USD through ``Decimal(str(x))`` (half-up), never float maths.

Errors: 429, 502, 503, 504, network errors and timeouts are retried with exponential backoff and
jitter, at most ``max_attempts`` tries, then ``ProviderRateLimitedError`` (429) or
``ProviderUnavailableError``. 401, 403 and vast's 404 ``auth_error`` / "Invalid user key" are
``ProviderAuthError`` and never retried. The API key travels only in the ``Authorization``
header: never in a URL, a log line or a ``repr``.

A rent whose answer was lost (read timeout, 502/504, dropped connection) may still have rented
the offer, and the retry then meets ``no_such_ask``: in that case the instance is looked up by
its label (our instance id) before giving up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

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
from infrastructure.http_retry import Backoff, Retry, RetryPolicy

if TYPE_CHECKING:
    from domain.marketplace import GpuProvider

log = logging.getLogger(__name__)

PROVIDER_NAME: Final = "vast.ai"
DEFAULT_API_URL: Final = "https://console.vast.ai"
DEFAULT_TIMEOUT_S: Final = 30.0
USER_AGENT: Final = "aiserve-gpuproxy/0.1 (vast.ai adapter)"

RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
RETRY_EXCEPTIONS: Final = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Answers after which the request may have been carried out all the same.
MAYBE_PROCESSED_STATUSES: Final = frozenset({500, 502, 504})
LIST_PAGE_SIZE: Final = 25
MAX_LIST_PAGES: Final = 400  # 10 000 instances; a cursor that never ends is a server bug
MB_PER_GB: Final = Decimal(1000)
MICRO_PER_USD: Final = Decimal(1_000_000)
_ID = re.compile(r"[0-9]{1,18}")

# vast ``gpu_name`` values (spaces, not underscores). ``OfferQuery.gpu_model`` is a substring,
# which the API cannot express: the search sends ``gpu_name in [every known name containing
# it]`` and re-checks locally. A substring that matches none of these is sent as ``eq``.
KNOWN_GPU_NAMES: Final[tuple[str, ...]] = (
    "GTX 1080 Ti",
    "Titan RTX",
    "Q RTX 8000",
    "RTX 3060",
    "RTX 3060 Ti",
    "RTX 3070",
    "RTX 3080",
    "RTX 3080 Ti",
    "RTX 3090",
    "RTX 3090 Ti",
    "RTX 4060 Ti",
    "RTX 4070",
    "RTX 4070 Ti",
    "RTX 4080",
    "RTX 4090",
    "RTX 5070 Ti",
    "RTX 5080",
    "RTX 5090",
    "RTX A4000",
    "RTX A4500",
    "RTX A5000",
    "RTX A6000",
    "RTX 4000Ada",
    "RTX 5000Ada",
    "RTX 6000Ada",
    "RTX PRO 6000 WS",
    "Tesla T4",
    "Tesla V100",
    "A10",
    "A40",
    "A100 PCIE",
    "A100 SXM4",
    "A100X",
    "A800 PCIE",
    "L4",
    "L40",
    "L40S",
    "H100 PCIE",
    "H100 SXM",
    "H100 NVL",
    "H200",
    "H200 NVL",
    "GH200 SXM",
    "B200",
)

# Offer row fields kept in ``Offer.metadata`` (raw vast units, see the fact sheet).
OFFER_METADATA_FIELDS: Final = (
    "machine_id",
    "host_id",
    "gpu_ram",
    "dph_base",
    "dph_total",
    "min_bid",
    "storage_cost",
    "verification",
    "cuda_max_good",
    "driver_version",
    "compute_cap",
    "cpu_cores_effective",
    "cpu_ram",
    "disk_space",
    "inet_up",
    "inet_down",
    "inet_up_cost",
    "inet_down_cost",
    "direct_port_count",
    "hosting_type",
    "datacenter",
    "score",
    "dlperf",
)

# vast ``actual_status`` → our states (see ``_state``).
_PROVISIONING = frozenset({"", "created", "loading", "scheduling", "rebooting", "restarting"})
_DEAD = frozenset({"exited", "unknown", "offline"})

Sleep = Callable[[float], Awaitable[None]]


def usd_to_micro(value: object) -> int:
    """USD (a vast JSON number or string) → integer micro-USD, exactly, rounded half-up.

    ``Decimal(str(x))`` keeps what vast wrote (``2.01`` stays 2.01, not 2.00999…).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"not a price: {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a price: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"not a price: {value!r}")
    return int((amount * MICRO_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def micro_to_usd(micro: int) -> float:
    """Integer micro-USD → the USD number vast compares against (``600000`` → ``0.6``)."""
    return float(Decimal(micro) / MICRO_PER_USD)


def mb_to_gb(value: object) -> float:
    """vast MB (``gpu_ram``) → GB as the CLI counts them (÷1000)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a size: {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a size: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"not a size: {value!r}")
    return float(amount / MB_PER_GB)


def gb_to_mb(gb: float) -> int | float:
    """GB → vast MB for a ``gpu_ram`` filter (``24`` → ``24000``)."""
    mb = Decimal(str(gb)) * MB_PER_GB
    return int(mb) if mb == mb.to_integral_value() else float(mb)


@dataclass
class _Trace:
    """What the attempts of one call saw; ``maybe_processed``: an answer may have been lost."""

    attempts: int = 0
    maybe_processed: bool = False


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_code(body: Any) -> str:
    if isinstance(body, dict):
        return str(body.get("error") or "")
    return ""


def _error_text(response: httpx.Response, body: Any) -> str:
    if isinstance(body, dict):
        for key in ("msg", "message", "detail", "error"):
            value = body.get(key)
            if value:
                return str(value)[:300]
    return response.text.strip()[:300]


def _is_auth_failure(status: int, code: str, text: str) -> bool:
    if status == 401:
        return True
    if status == 403:
        return code != "invalid_args"  # 403 invalid_args: "Offer N is not your own"
    lowered = text.lower()
    return status == 404 and (
        code == "auth_error" or "invalid user key" in lowered or "session expired" in lowered
    )


def _is_credit_failure(status: int, code: str, text: str) -> bool:
    words = f"{code} {text}".lower()
    return status == 402 or "credit" in words or "missing_billing" in words


def _parse_id(value: str, what: str) -> int:
    text = str(value).strip()
    if not _ID.fullmatch(text):
        raise InvalidProviderRequestError(PROVIDER_NAME, f"not a vast.ai {what} id: {value!r}")
    return int(text)


def _requested_ports(row: Mapping[str, Any]) -> list[str] | None:
    """Container port keys (``"8000/tcp"``) from the ``-p`` entries of ``extra_env``, in order.

    ``None`` when the row has no ``extra_env`` at all (so the caller may guess).
    """
    extra = row.get("extra_env")
    if isinstance(extra, dict):
        keys = [str(k) for k in extra]
    elif isinstance(extra, list):
        keys = [str(pair[0]) for pair in extra if isinstance(pair, list | tuple) and pair]
    else:
        return None
    ports: list[str] = []
    for key in keys:
        parts = key.split()
        if len(parts) != 2 or parts[0] != "-p":
            continue
        spec = parts[1].rsplit(":", 1)[-1]  # "[ip:]host:container[/proto]" → container part
        number, _, proto = spec.partition("/")
        if number.isdigit():
            ports.append(f"{int(number)}/{proto or 'tcp'}")
    return ports


def _mapped_port(row: Mapping[str, Any]) -> int | None:
    """Host port mapped to the first requested container port, from ``ports``."""
    mapping = row.get("ports")
    if not isinstance(mapping, dict) or not mapping:
        return None
    wanted = _requested_ports(row)
    if wanted is None:  # no extra_env in this row: the first port that is not ssh
        others = sorted(
            (k for k in mapping if isinstance(k, str) and k != "22/tcp"),
            key=lambda k: (not k.partition("/")[0].isdigit(), k.partition("/")[0].zfill(5)),
        )
        wanted = others[:1]
    if not wanted:
        return None
    bindings = mapping.get(wanted[0])
    if not isinstance(bindings, list):
        return None
    for binding in bindings:
        if isinstance(binding, dict):
            host_port = str(binding.get("HostPort") or "").strip()
            if host_port.isdigit():
                return int(host_port)
    return None


def _state(row: Mapping[str, Any]) -> str:
    """vast's ``actual_status`` / ``intended_status`` / ``status_msg`` → one of INSTANCE_STATES.

    - ``running`` → running (stopping when a stop was asked for);
    - null, ``created``, ``loading``, ``rebooting`` … → provisioning, except ``created`` with an
      "OCI runtime create failed" message, which never recovers → failed;
    - ``stopped`` / ``frozen`` → stopping when a stop was asked for, else failed (outbid, out of
      balance: nobody here stops instances, the broker destroys them);
    - ``exited``, ``unknown``, ``offline`` → failed (they never come back by themselves);
    - anything else → unknown.
    """
    actual = str(row.get("actual_status") or "").strip().lower()
    intended = str(row.get("intended_status") or "").strip().lower()
    message = str(row.get("status_msg") or "").lower()
    stop_asked = intended == "stopped"
    if actual == "running":
        return "stopping" if stop_asked else "running"
    if actual in _PROVISIONING:
        if "oci runtime create failed" in message:
            return "failed"
        return "stopping" if stop_asked else "provisioning"
    if actual in {"stopped", "frozen"}:
        return "stopping" if stop_asked else "failed"
    if actual in _DEAD:
        return "failed"
    return "unknown"


class VastAiProvider:
    """vast.ai behind the marketplace port. See the module docstring."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_API_URL,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        search_storage_gb: float | None = 20.0,
        extra_filters: Mapping[str, Mapping[str, Any]] | None = None,
        gpu_names: Sequence[str] = KNOWN_GPU_NAMES,
    ) -> None:
        """
        ``client``: an ``httpx.AsyncClient`` to use (not closed by ``aclose``); otherwise one is
        made with ``transport`` (tests pass ``httpx.ASGITransport``). ``timeout`` applies to
        every request, whichever client. ``max_attempts`` bounds the tries of one call; the
        wait before try ``n + 1`` is ``min(backoff_max_s, backoff_base_s * 2 ** (n - 1))``
        scaled by ``0.5 + 0.5 * jitter()``, through the injected ``sleep``.
        ``search_storage_gb``: the disk vast prices ``dph_total`` with (``allocated_storage``;
        ``None`` leaves vast's default). ``extra_filters``: more ``q`` filters for every
        search, e.g. quality floors ``{"verified": {"eq": True}, "reliability": {"gte": 0.95}}``.
        """
        if client is not None and transport is not None:
            raise ValueError("pass either client or transport, not both")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._api_key = api_key
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._retry = RetryPolicy(
            max_attempts,
            Backoff(backoff_base_s, backoff_max_s, jitter=jitter),
            sleep=sleep,
            retry_statuses=RETRY_STATUSES,
            retry_exceptions=RETRY_EXCEPTIONS,
        )
        self._search_storage_gb = search_storage_gb
        self._extra_filters = {k: dict(v) for k, v in (extra_filters or {}).items()}
        self._gpu_names = tuple(gpu_names)
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(transport=transport, timeout=timeout)
        self._headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> VastAiProvider:
        """Key from ``VASTAI_API_KEY``, origin from ``VASTAI_API_URL`` (default console.vast.ai)."""
        source = os.environ if env is None else env
        return cls(
            source.get("VASTAI_API_KEY", ""),
            base_url=source.get("VASTAI_API_URL") or DEFAULT_API_URL,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"VastAiProvider(base_url={self._base_url!r})"

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    @property
    def base_url(self) -> str:
        return self._base_url

    async def __aenter__(self) -> VastAiProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    # ---------------------------------------------------------------------------- search

    def search_body(self, query: OfferQuery) -> dict[str, Any]:
        """The ``POST /api/v0/bundles/`` body for ``query`` (public for tests and logs)."""
        q: dict[str, Any] = {"rentable": {"eq": True}}
        q.update({k: dict(v) for k, v in self._extra_filters.items()})
        if query.min_vram_gb is not None:
            q["gpu_ram"] = {"gte": gb_to_mb(query.min_vram_gb)}
        if query.max_price_per_hour is not None:
            q["dph_total"] = {"lte": micro_to_usd(query.max_price_per_hour)}
        if query.num_gpus is not None:
            q["num_gpus"] = {"eq": query.num_gpus}
        if query.gpu_model:
            wanted = query.gpu_model.replace("_", " ").strip()
            names = [n for n in self._gpu_names if wanted.lower() in n.lower()]
            q["gpu_name"] = {"in": names} if names else {"eq": wanted}
        if query.region:
            region = query.region.strip()
            # vast filters on the trailing two-letter country code; other text is local only.
            if len(region) == 2 and region.isascii() and region.isalpha():
                q["geolocation"] = {"in": [region.upper()]}
        q["order"] = [["dph_total", "asc"]]
        q["type"] = "on-demand"
        q["limit"] = query.limit
        if self._search_storage_gb is not None:
            q["allocated_storage"] = self._search_storage_gb
        return q

    async def search(self, query: OfferQuery) -> list[Offer]:
        if query.limit <= 0:
            return []
        response = await self._send(
            "POST", "/api/v0/bundles/", op="search", json_body=self.search_body(query)
        )
        if response.status_code != 200:
            raise self._error(response, "search")
        body = _body(response)
        rows = body.get("offers") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise ProviderError(
                PROVIDER_NAME, "search: answer has no offers list", status=response.status_code
            )
        offers = [
            offer
            for offer in (self._offer(row) for row in rows)
            if offer is not None and query.accepts(offer)
        ]
        offers.sort(key=lambda offer: offer.price_per_hour)
        return offers[: query.limit]

    def _offer(self, row: object) -> Offer | None:
        if not isinstance(row, dict):
            return None
        try:
            offer_id = str(_parse_id(str(row["id"]), "offer"))
            num_gpus = int(row["num_gpus"])
            vram_gb = mb_to_gb(row["gpu_ram"])
            price = usd_to_micro(row["dph_total"])
            gpu_model = str(row["gpu_name"])
        except (KeyError, TypeError, ValueError, ProviderError):
            log.warning("vast.ai: skipping a malformed offer row (id %r)", row.get("id"))
            return None
        metadata = {key: row[key] for key in OFFER_METADATA_FIELDS if key in row}
        if self._search_storage_gb is not None:
            metadata["allocated_storage_gb"] = self._search_storage_gb
        return Offer(
            provider=PROVIDER_NAME,
            offer_id=offer_id,
            gpu_model=gpu_model,
            num_gpus=num_gpus,
            vram_gb=vram_gb,
            price_per_hour=price,
            location=str(row.get("geolocation") or "").strip(),
            reliability=self._reliability(row),
            metadata=metadata,
        )

    @staticmethod
    def _reliability(row: Mapping[str, Any]) -> float:
        for key in ("reliability2", "reliability"):
            value = row.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return min(1.0, max(0.0, float(value)))
        return 1.0

    # ---------------------------------------------------------------------------- rent

    @staticmethod
    def rent_body(request: RentRequest) -> dict[str, Any]:
        """The ``PUT /api/v0/asks/{id}/`` body for ``request``.

        Ports become ``"-p P:P": "1"`` keys of ``env`` (vast maps each to a random host port).
        With an ``onstart`` script the runtype is ``ssh_direct`` (vast runs it after its own
        entrypoint); without one it is ``args``, so the image's own entrypoint serves.
        ``cancel_unavail`` makes an offer that cannot start now fail (410) instead of leaving
        a stopped instance behind.
        """
        env = dict(request.env)
        for port in request.ports:
            env[f"-p {port}:{port}"] = "1"
        body: dict[str, Any] = {
            "client_id": "me",
            "image": request.image,
            "disk": request.disk_gb,
            "label": request.label,
            "runtype": "ssh_direct" if request.onstart else "args",
            "env": env,
            "cancel_unavail": True,
        }
        if request.onstart:
            body["onstart"] = request.onstart
        return body

    async def rent(self, offer_id: str, request: RentRequest) -> ProviderInstance:
        ask = _parse_id(offer_id, "offer")
        trace = _Trace()
        try:
            return await self._rent_once(ask, request, trace)
        except (ProviderUnavailableError, OfferUnavailableError):
            if not trace.maybe_processed:
                raise
            found = await self._find_by_label(request.label)
            if found is None:
                raise
            log.warning(
                "vast.ai: rent of offer %s lost its answer; found instance %s by its label",
                ask,
                found.instance_id,
            )
            return found

    async def _rent_once(self, ask: int, request: RentRequest, trace: _Trace) -> ProviderInstance:
        response = await self._send(
            "PUT", f"/api/v0/asks/{ask}/", op="rent", json_body=self.rent_body(request), trace=trace
        )
        body = _body(response)
        contract = body.get("new_contract") if isinstance(body, dict) else None
        succeeded = isinstance(body, dict) and body.get("success") is not False
        if response.status_code == 200 and succeeded and contract is not None:
            instance_id = str(_parse_id(str(contract), "instance"))
            return ProviderInstance(
                provider=PROVIDER_NAME,
                instance_id=instance_id,
                status="provisioning",
                label=request.label,
            )
        error = self._rent_error(response, body, ask)
        if contract is not None:
            # vast failed the create but made an instance all the same (e.g. created stopped):
            # it costs storage until destroyed, and it is not what was asked for.
            await self._destroy_quietly(str(contract))
            if not isinstance(error, InsufficientProviderCreditError | ProviderAuthError):
                error = OfferUnavailableError(
                    PROVIDER_NAME,
                    f"offer {ask} could not start (instance {contract} destroyed): {error}",
                    status=response.status_code,
                )
        raise error

    def _rent_error(self, response: httpx.Response, body: Any, ask: int) -> ProviderError:
        status, code = response.status_code, _error_code(body)
        text = _error_text(response, body)
        if _is_auth_failure(status, code, text) or _is_credit_failure(status, code, text):
            return self._error(response, "rent")
        if status in {403, 404, 410} or "no_such_ask" in f"{code} {text}":
            return OfferUnavailableError(
                PROVIDER_NAME, f"offer {ask} is not available: {text}", status=status
            )
        if status == 200:  # success false without a contract
            return ProviderError(PROVIDER_NAME, f"rent of offer {ask} failed: {text}", status=200)
        return self._error(response, "rent")

    async def _find_by_label(self, label: str) -> ProviderInstance | None:
        try:
            instances = await self.list_instances()
        except ProviderError as exc:
            log.warning("vast.ai: could not list instances to find label %r: %s", label, exc)
            return None
        matches = [i for i in instances if i.label == label]
        return max(matches, key=lambda i: int(i.instance_id), default=None)

    # ---------------------------------------------------------------------------- status

    async def status(self, instance_id: str) -> ProviderInstance:
        number = _parse_id(instance_id, "instance")
        response = await self._send(
            "GET", f"/api/v0/instances/{number}/", op="status", params={"owner": "me"}
        )
        body = _body(response)
        if response.status_code == 404 and not _is_auth_failure(
            404, _error_code(body), _error_text(response, body)
        ):
            raise InstanceNotFoundError(PROVIDER_NAME, f"instance {number} not found", status=404)
        if response.status_code != 200:
            raise self._error(response, "status")
        if not isinstance(body, dict) or "instances" not in body:
            raise ProviderError(PROVIDER_NAME, "status: answer has no instances key", status=200)
        row = body["instances"]
        if isinstance(row, list):  # tolerate a one-element list
            row = row[0] if row else None
        if row is None:
            raise InstanceNotFoundError(PROVIDER_NAME, f"instance {number} not found", status=200)
        instance = self._instance(row)
        if instance is None:
            raise ProviderError(PROVIDER_NAME, f"status: malformed instance {number}", status=200)
        return instance

    def _instance(self, row: object) -> ProviderInstance | None:
        if not isinstance(row, dict) or row.get("id") is None:
            return None
        try:
            instance_id = str(_parse_id(str(row["id"]), "instance"))
        except ProviderError:
            return None
        price: int | None = None
        if row.get("dph_total") is not None:
            try:
                price = usd_to_micro(row["dph_total"])
            except ValueError:
                price = None
        started = row.get("start_date")
        label = row.get("label")
        host = str(row.get("public_ipaddr") or "").strip() or None
        return ProviderInstance(
            provider=PROVIDER_NAME,
            instance_id=instance_id,
            status=_state(row),
            raw_status=str(row.get("actual_status") or ""),
            label=str(label) if label else None,
            host=host,
            port=_mapped_port(row),
            price_per_hour=price,
            started_at=(
                float(started)
                if isinstance(started, int | float) and not isinstance(started, bool)
                else None
            ),
        )

    # ---------------------------------------------------------------------------- list

    async def list_instances(self) -> list[ProviderInstance]:
        params: dict[str, str] = {
            "limit": str(LIST_PAGE_SIZE),
            "order_by": '[{"col":"id","dir":"asc"}]',
        }
        found: list[ProviderInstance] = []
        seen_tokens: set[str] = set()
        for _ in range(MAX_LIST_PAGES):
            response = await self._send(
                "GET", "/api/v1/instances/", op="list_instances", params=params
            )
            if response.status_code != 200:
                raise self._error(response, "list_instances")
            body = _body(response)
            rows = body.get("instances") if isinstance(body, dict) else None
            if not isinstance(body, dict) or not isinstance(rows or [], list):
                raise ProviderError(PROVIDER_NAME, "list_instances: malformed answer", status=200)
            for row in rows or []:
                instance = self._instance(row)
                if instance is not None:
                    found.append(instance)
            token = body.get("next_token")
            if not token:
                return found
            if not isinstance(token, str) or token in seen_tokens:
                raise ProviderError(PROVIDER_NAME, "list_instances: next_token repeats", status=200)
            seen_tokens.add(token)
            params["after_token"] = token
        raise ProviderError(PROVIDER_NAME, f"list_instances: more than {MAX_LIST_PAGES} pages")

    # ---------------------------------------------------------------------------- destroy

    async def destroy(self, instance_id: str) -> None:
        number = _parse_id(instance_id, "instance")
        response = await self._send(
            "DELETE", f"/api/v0/instances/{number}/", op="destroy", json_body={}
        )
        body = _body(response)
        code, text = _error_code(body), _error_text(response, body)
        gone = code in {"no_such_instance", "not_found"}
        if response.status_code == 200:
            if isinstance(body, dict) and body.get("success") is False and not gone:
                raise ProviderError(PROVIDER_NAME, f"destroy {number} failed: {text}", status=200)
            return
        if response.status_code == 404 and not _is_auth_failure(404, code, text):
            return  # already gone
        if gone:
            return
        raise self._error(response, "destroy")

    async def _destroy_quietly(self, instance_id: str) -> None:
        try:
            await self.destroy(instance_id)
        except ProviderError as exc:  # the reconciler finds it by label later
            log.warning("vast.ai: could not destroy instance %s: %s", instance_id, exc)

    # ---------------------------------------------------------------------------- HTTP

    def _error(
        self, response: httpx.Response, op: str, *, attempts: int | None = None
    ) -> ProviderError:
        """The port's error for a final, unsuccessful answer."""
        body = _body(response)
        status, code = response.status_code, _error_code(body)
        text = _error_text(response, body)
        message = f"{op}: HTTP {status}{f' {code}' if code else ''}: {text}"
        if attempts is not None:
            message += f" (after {attempts} attempts)"
        if _is_auth_failure(status, code, text):
            return ProviderAuthError(PROVIDER_NAME, message, status=status)
        if _is_credit_failure(status, code, text):
            return InsufficientProviderCreditError(PROVIDER_NAME, message, status=status)
        if status == 429:
            return ProviderRateLimitedError(PROVIDER_NAME, message, status=status)
        if status >= 500:
            return ProviderUnavailableError(PROVIDER_NAME, message, status=status)
        if status in {400, 422}:
            return InvalidProviderRequestError(PROVIDER_NAME, message, status=status)
        return ProviderError(PROVIDER_NAME, message, status=status)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        op: str,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        trace: _Trace | None = None,
    ) -> httpx.Response:
        """One call with bounded retries; returns the first answer that is not retried.

        Raises ``ProviderRateLimitedError`` / ``ProviderUnavailableError`` once the attempts
        are spent on 429, 502, 503, 504, network errors or timeouts.
        """
        trace = trace if trace is not None else _Trace()
        url = self._base_url + path

        async def one_try(attempt: int) -> httpx.Response | Retry:
            trace.attempts = attempt
            try:
                response = await self._client.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=self._headers,
                    timeout=self._timeout,
                )
            except RETRY_EXCEPTIONS as exc:
                if not isinstance(
                    exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
                ):
                    trace.maybe_processed = True
                reason = type(exc).__name__
                return Retry(
                    reason,
                    lambda n: ProviderUnavailableError(
                        PROVIDER_NAME, f"{op}: {reason} after {n} attempts"
                    ),
                    cause=exc,
                )
            log.debug("vast.ai %s %s -> %s", method, path, response.status_code)
            if response.status_code in MAYBE_PROCESSED_STATUSES:
                trace.maybe_processed = True
            if not self._retry.retries_status(response.status_code):
                return response
            return Retry(
                f"HTTP {response.status_code}",
                lambda n: self._error(response, op, attempts=n),
            )

        def waiting(attempt: int, retry: Retry, delay: float) -> None:
            log.warning(
                "vast.ai %s (%s %s): %s; try %d of %d in %.2f s",
                op,
                method,
                path,
                retry.reason,
                attempt + 1,
                self._retry.max_attempts,
                delay,
            )

        return await self._retry.run(one_try, on_retry=waiting, attempts_made=trace.attempts)


if TYPE_CHECKING:

    def _conforms(provider: VastAiProvider) -> GpuProvider:
        return provider
