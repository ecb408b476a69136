"""Load-balancer answers: the strategy, and the load per instance and per provider."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from msgspec import Struct

from domain.money import micros_to_usd
from infrastructure.readmodels.queries.instances import InstanceTraffic


class Strategy(Struct):
    strategy: str
    available: list[str]


class StrategySet(Struct):
    strategy: str
    message: str


class InstanceLoad(Struct):
    """Live figures from this process, totals from the ``proxy_load`` read model."""

    instance_id: str
    provider: str
    gpu_model: str
    state: str
    active_connections: int
    avg_response_time_ms: float | None
    consecutive_failures: int
    ejected: bool
    total_requests: int
    total_errors: int
    mean_latency_ms: float | None


class ServerLoad(Struct):
    instances: list[InstanceLoad]
    count: int


class ProviderLoad(Struct):
    instances: int
    active_connections: int
    total_requests: int
    total_errors: int


class Lease(Struct):
    """The proxy's open credit lease: held, and spent from it so far (USD)."""

    held: str
    spent: str


class Load(Struct, omit_defaults=True):
    """``server`` and/or ``provider`` as ``type`` asks; ``lease`` while one is open."""

    strategy: str
    server: ServerLoad | None = None
    provider: dict[str, ProviderLoad] | None = None
    lease: Lease | None = None

    @classmethod
    def of(cls, strategy: str, server: ServerLoad, kind: str, lease: Lease | None) -> Load:
        return cls(
            strategy=strategy,
            server=server if kind in {"server", "all"} else None,
            provider=provider_load(server) if kind in {"provider", "all"} else None,
            lease=lease,
        )


def server_load(rows: Iterable[InstanceTraffic], live: Mapping[str, Any]) -> ServerLoad:
    """The owner's instances' traffic (``InstanceQueries.traffic_for``) and live figures."""
    instances = []
    for row in rows:
        now = live.get(row.instance_id)
        requests, latency = row.requests, row.latency_ms_sum
        instances.append(
            InstanceLoad(
                instance_id=row.instance_id,
                provider=row.provider,
                gpu_model=row.gpu_model,
                state=row.state,
                active_connections=now.active if now else 0,
                avg_response_time_ms=round(now.ewma_ms, 3) if now else None,
                consecutive_failures=now.consecutive_failures if now else 0,
                ejected=bool(now and now.ejected),
                total_requests=requests,
                total_errors=row.errors,
                mean_latency_ms=round(latency / requests, 3) if requests else None,
            )
        )
    return ServerLoad(instances=instances, count=len(instances))


def provider_load(server: ServerLoad) -> dict[str, ProviderLoad]:
    providers: dict[str, ProviderLoad] = {}
    for item in server.instances:
        entry = providers.setdefault(item.provider, ProviderLoad(0, 0, 0, 0))
        entry.instances += 1
        entry.active_connections += item.active_connections
        entry.total_requests += item.total_requests
        entry.total_errors += item.total_errors
    return providers


def lease_of(lease: Any) -> Lease | None:
    if lease is None:
        return None
    return Lease(held=micros_to_usd(lease.amount), spent=micros_to_usd(lease.spent))
