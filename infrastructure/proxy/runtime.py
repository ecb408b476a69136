"""The proxy's per-process state and the one forwarding path every proxy route uses.

Per request: the caller's running instances (read model, cached a second and only while the
user's instance signal is unchanged: see "Read your writes" below), the target check
(``TargetGuard``: only their own instances, no SSRF), one credit-lease spend (in memory),
a balancing pick (``LoadTracker``, this process's live figures), the upstream call
(``Forwarder``), and a retry on another instance for connect errors and 502/503 within the
retry budget. Counters are flushed as ``ProxyUsage`` events every few seconds, with the
per-caller tallies the usage sessions are folded from; nothing is written to the event store
per request. With Redis the fee is also added to the lease's durable tally (``RedisFeeTally``),
started when it is spent and awaited before the answer is handed back, so a fee the client
was answered for is captured even if this process dies (docs/adr/0029).

Read your writes: the marketplace bumps the owner's ``InstanceSignal`` after saving a change
into or out of ``running``, before it answers. A cached list is used only while the signal
reads what it read before the list was loaded; otherwise the ``instances`` read model is
first caught up with the log (this process applies the missing events itself, exactly once
like any runner, bounded by ``SYNC_TIMEOUT``) and then read. A lookup that misses (the
instance is not in the list, or the list is empty) on a list loaded without that catch-up is
retried once after it. So an answer that said ``running`` or ``terminated`` is what the next
proxied request sees, on any process; a stopping or ended instance is never a target.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from domain.balancing import Backend, LoadTracker, check_strategy
from domain.errors import (
    InstanceNotReachableError,
    InstancesBehindError,
    NoRunningInstancesError,
)
from domain.ports.clock import Clock
from domain.ports.fee_tally import FeeTally
from domain.services.ledger import LedgerService
from domain.services.proxy_leases import ProxyLeases
from domain.usage import Caller, ProxyUsage, SessionTally
from infrastructure.db.sql import Database
from infrastructure.proxy.fee_tally import RedisFeeTally
from infrastructure.proxy.forwarder import (
    Body,
    Forwarder,
    Headers,
    UpstreamConnectError,
    UpstreamResponse,
)
from infrastructure.proxy.instance_signal import (
    InstanceSignal,
    LocalInstanceSignal,
    RedisInstanceSignal,
)
from infrastructure.proxy.targets import (
    NOT_YOURS,
    Endpoint,
    Target,
    TargetGuard,
    TargetRefusedError,
    parse_host,
)
from infrastructure.readmodels.queries.instances import InstanceQueries
from infrastructure.readmodels.runner import ProjectionRunner

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({502, 503})
ENDPOINTS_TTL = 1.0  # seconds a user's instance list is reused (while its signal holds)
SYNC_TIMEOUT = 2.0  # seconds a lookup may spend catching the instances read model up
TARGETS_KEPT = 4096  # checked targets remembered (endpoints with an IP-literal host only)
STRATEGY_TTL = 2.0  # seconds a user's strategy is reused (changes reach other processes then)


@dataclass(frozen=True)
class Upstream:
    """An answer in flight: close it with ``done(ok)`` once its body was sent on."""

    response: UpstreamResponse
    endpoint: Endpoint
    done: Callable[[bool], None]

    async def chunks(self) -> AsyncIterator[bytes]:
        ok = False
        try:
            async for chunk in self.response.iter_chunks():
                yield chunk
            ok = True
        finally:
            self.done(ok and self.response.status < 500)


@dataclass
class _Pool:
    at: float
    endpoints: list[Endpoint]
    backends: list[Backend]
    mark: object = 0  # the user's instance signal, read before this list was loaded
    synced: bool = False  # loaded right after catching the read model up with the log


class ProxyRuntime:
    def __init__(
        self,
        db: Database,
        ledger: LedgerService,
        *,
        default_strategy: str,
        price: int,
        lease_amount: int,
        allow_private: bool,
        sandbox_private: bool = False,
        connect_timeout: float,
        default_timeout: float,
        flush_interval: float,
        clock: Clock,
        signal: InstanceSignal | None = None,
        runner: ProjectionRunner | None = None,
        session_idle_minutes: int = 30,
        fee_tally: FeeTally | None = None,
    ) -> None:
        self.db = db
        self.instances = InstanceQueries(db)
        self.ledger = ledger
        self.clock = clock
        self.default_strategy = default_strategy
        self.default_timeout = default_timeout
        self.flush_interval = flush_interval
        self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tracker = LoadTracker()
        self.sessions = SessionTally()
        self.session_idle_minutes = session_idle_minutes
        self.guard = TargetGuard(allow_private=allow_private, sandbox_private=sandbox_private)
        self.forwarder = Forwarder(connect_timeout=connect_timeout)
        if fee_tally is None and isinstance(signal, RedisInstanceSignal):
            fee_tally = RedisFeeTally(signal.client)  # the replicas' Redis (REDIS_URL)
        self.fee_tally = fee_tally
        self.leases = ProxyLeases(
            ledger,
            price=price,
            lease_amount=lease_amount,
            ttl=timedelta(minutes=10),
            process_id=self.process_id,
            clock=clock,
            tally=fee_tally,
        )
        self._pools: dict[str, _Pool] = {}
        self._loads: dict[str, tuple[object, bool, asyncio.Future[_Pool]]] = {}
        self.signal: InstanceSignal = signal or LocalInstanceSignal()
        self._runner = runner
        self._strategies: dict[str, tuple[float, str]] = {}
        self._owners: dict[str, tuple[str, str]] = {}  # instance id -> (owner, provider)
        self._targets: dict[tuple[Endpoint, str, str], Target] = {}

    # ------------------------------------------------------------ instances

    def _running(self, user_id: str, mark: object = 0, sync: bool = False) -> _Pool:
        deadline = time.monotonic() + SYNC_TIMEOUT
        if sync and self._runner and not self._runner.catch_up_one("instances", deadline):
            raise InstancesBehindError("your instance list is catching up; try again shortly")
        rows = self.instances.running_for(user_id)
        endpoints = [Endpoint(r.instance_id, r.provider, r.host, r.port) for r in rows]
        backends = [
            Backend(r.instance_id, r.provider, r.vram_gb * max(1, r.num_gpus), r.price_per_hour)
            for r in rows
        ]
        for endpoint in endpoints:
            self._owners[endpoint.instance_id] = (user_id, endpoint.provider)
        return _Pool(time.monotonic(), endpoints, backends, mark, sync)

    async def pool(self, user_id: str, *, fresh: bool = False) -> _Pool:
        """The caller's running instances (see "Read your writes" in the module docstring).

        ``fresh``: catch the read model up and reload even if the signal has not moved.
        """
        if self.signal.cheap:
            mark = self.signal.read(user_id)
        elif (aread := getattr(self.signal, "aread", None)) is not None:
            mark = await aread(user_id)  # Redis on the event loop, batched
        else:
            mark = await asyncio.to_thread(self.signal.read, user_id)
        pool = self._pools.get(user_id)
        if pool is not None and not fresh and pool.mark == mark:
            if time.monotonic() - pool.at <= ENDPOINTS_TTL:
                return pool
            return await self._load(user_id, mark, sync=False)
        return await self._load(user_id, mark, sync=True)

    async def _load(self, user_id: str, mark: object, *, sync: bool) -> _Pool:
        """Load once per process for concurrent lookups that read the same signal."""
        flight = self._loads.get(user_id)
        if flight is not None and flight[0] == mark and (flight[1] or not sync):
            return await asyncio.shield(flight[2])
        loading = asyncio.ensure_future(asyncio.to_thread(self._running, user_id, mark, sync))
        self._loads[user_id] = (mark, sync, loading)
        try:
            pool = await asyncio.shield(loading)
        finally:
            if self._loads.get(user_id, (None, None, None))[2] is loading:
                del self._loads[user_id]
        self._pools[user_id] = pool
        return pool

    def forget_pool(self, user_id: str) -> None:
        self._pools.pop(user_id, None)

    # ------------------------------------------------------------ strategy

    def _stored_strategy(self, user_id: str) -> str:
        with self.db.read() as tx:
            row = tx.fetchone(
                "SELECT lb_strategy FROM user_preferences WHERE user_id = ?", (user_id,)
            )
        return str(row[0]) if row and row[0] else self.default_strategy

    def current_strategy(self, user_id: str) -> str:
        """The user's strategy, read now (for reports; the hot path uses ``strategy``)."""
        return self._stored_strategy(user_id)

    async def strategy(self, user_id: str) -> str:
        cached = self._strategies.get(user_id)
        if cached is None or time.monotonic() - cached[0] > STRATEGY_TTL:
            name = await asyncio.to_thread(self._stored_strategy, user_id)
            cached = (time.monotonic(), name)
            self._strategies[user_id] = cached
        return cached[1]

    def set_strategy(self, user_id: str, name: str) -> str:
        """Store the user's strategy (tracked load is kept: it lives in the tracker)."""
        name = check_strategy(name.strip().lower())
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM user_preferences WHERE user_id = ?", (user_id,))
            tx.execute(
                "INSERT INTO user_preferences (user_id, lb_strategy, updated_at) VALUES (?, ?, ?)",
                (user_id, name, int(time.time() * 1_000_000)),
            )
        self._strategies[user_id] = (time.monotonic(), name)
        return name

    # ------------------------------------------------------------ forwarding

    async def forward(
        self,
        user_id: str,
        *,
        method: str,
        headers: Headers,
        body: Body,
        timeout: float | None,
        target_url: str | None = None,
        instance_id: str | None = None,
        path: str = "/",
        query: str = "",
        caller: Caller | None = None,
    ) -> Upstream:
        """Send one request to the caller's own instance(s); see the module docstring.

        ``caller`` (credential and address) puts the request and its fee into a usage session.
        """
        pool = await self.pool(user_id)
        try:
            fixed = await self._fixed_target(pool, target_url, instance_id, path, query)
        except (InstanceNotReachableError, NoRunningInstancesError, TargetRefusedError) as exc:
            if pool.synced or (isinstance(exc, TargetRefusedError) and exc.reason != NOT_YOURS):
                raise
            pool = await self.pool(user_id, fresh=True)  # a miss: make sure it is one
            fixed = await self._fixed_target(pool, target_url, instance_id, path, query)
        if not self.leases.try_spend(user_id):
            await self.leases.spend(user_id)
        stored = self.leases.tally_write(user_id)  # in flight beside the upstream call
        if caller is not None:
            self.sessions.count(user_id, caller, self.leases.price, "proxy_fees")
        try:
            upstream = await self._send(
                user_id, pool, fixed, method, headers, body, timeout, path, query
            )
        except BaseException:  # nothing was delivered (e.g. the strategy's read failed): no fee
            if self.leases.refund(user_id) and caller is not None:
                self.sessions.refund(user_id, caller, self.leases.price, "proxy_fees")
            raise
        if stored is not None:
            try:
                await stored  # the fee outlives this process before the client sees an answer
            except BaseException:
                upstream.response.release()
                upstream.done(False)
                raise
        return upstream

    async def _send(
        self,
        user_id: str,
        pool: _Pool,
        fixed: Target | None,
        method: str,
        headers: Headers,
        body: Body,
        timeout: float | None,
        path: str,
        query: str,
    ) -> Upstream:
        """The paid part of ``forward``: pick, send, retry; raises if nothing was delivered."""
        deadline = time.monotonic() + (self.default_timeout if timeout is None else timeout)
        may_retry = fixed is None and not isinstance(body, AsyncIterator)
        strategy = await self.strategy(user_id) if fixed is None else ""
        tried: set[str] = set()
        retrying = False
        while True:
            target = fixed
            if target is None:
                backend = self.tracker.pick(strategy, pool.backends, key=user_id, exclude=tried)
                endpoint = next(e for e in pool.endpoints if e.instance_id == backend.instance_id)
                target = await self._target(endpoint, path, query)
            sent = await self._attempt(target, method, headers, body, deadline, retrying)
            retrying = False
            if isinstance(sent, Upstream):
                return sent
            tried.add(target.endpoint.instance_id)
            if not (may_retry and self._can_retry(pool, tried)):
                if isinstance(sent, UpstreamResponse):
                    return Upstream(sent, target.endpoint, lambda _ok: None)
                raise sent  # nothing delivered: ``forward`` gives the fee back
            if isinstance(sent, UpstreamResponse):
                sent.release()
            retrying = True

    async def _fixed_target(
        self,
        pool: _Pool,
        target_url: str | None,
        instance_id: str | None,
        path: str,
        query: str,
    ) -> Target | None:
        """The one target of a pinned request (URL or instance id); None for the pool."""
        if target_url is not None:
            return await self.guard.check(target_url, pool.endpoints)
        if instance_id is not None:
            endpoint = next((e for e in pool.endpoints if e.instance_id == instance_id), None)
            if endpoint is None:
                raise InstanceNotReachableError(
                    "not one of your running instances", instance_id=instance_id
                )
            return await self._target(endpoint, path, query)
        if not pool.backends:
            raise NoRunningInstancesError("you have no running instances to balance over")
        return None

    async def _attempt(
        self,
        target: Target,
        method: str,
        headers: Headers,
        body: Body,
        deadline: float,
        retrying: bool,
    ) -> Upstream | UpstreamResponse | UpstreamConnectError:
        """One try: an ``Upstream`` to answer with, or what failed (a retryable status/error)."""
        tracked = self.tracker.track(target.endpoint.instance_id)
        finish = self._finisher(tracked, retrying)
        try:
            response = await self.forwarder.send(
                method,
                target.url,
                headers,
                body,
                timeout=max(0.001, deadline - time.monotonic()),
                host_header=target.host_header,
            )
        except UpstreamConnectError as exc:
            finish(False)
            return exc
        except BaseException:
            finish(False)
            raise
        if response.status in RETRY_STATUSES:
            finish(False)
            return response
        return Upstream(response, target.endpoint, finish)

    async def _target(self, endpoint: Endpoint, path: str, query: str) -> Target:
        """``TargetGuard.check_endpoint``, remembered when the host is an IP literal.

        The check of an IP-literal endpoint depends only on its arguments (no DNS), so its
        answer can be reused; a refusal raises and is never remembered. DNS-named endpoints
        are checked (and their address pinned) on every request.
        """
        key = (endpoint, path, query)
        target = self._targets.get(key)
        if target is None:
            target = await self.guard.check_endpoint(endpoint, path, query)
            if not isinstance(parse_host(endpoint.host), str):
                if len(self._targets) >= TARGETS_KEPT:
                    self._targets.clear()
                self._targets[key] = target
        return target

    def _can_retry(self, pool: _Pool, tried: set[str]) -> bool:
        if not any(b.instance_id not in tried for b in pool.backends):
            return False
        return self.tracker.try_retry()

    def _finisher(self, tracked: Any, retrying: bool) -> Callable[[bool], None]:
        def done(ok: bool) -> None:
            tracked.done(ok=ok)
            if retrying:
                self.tracker.retry_done()

        return done

    # ------------------------------------------------------------ usage

    def flush(self) -> int:
        """Record the counters since the last flush as one ProxyUsage event; returns rows."""
        counts = self.tracker.drain()
        rows = []
        for instance_id, usage in counts.items():
            owner, provider = self._owners.get(instance_id, ("", ""))
            rows.append(
                {
                    "instance_id": instance_id,
                    "owner": owner,
                    "provider": provider,
                    "requests": usage.requests,
                    "errors": usage.errors,
                    "latency_ms_sum": round(usage.latency_ms_sum),
                }
            )
        if rows or self.sessions:
            at = self.clock()
            sessions = self.sessions.drain(at)
            self.ledger.record_usage(
                ProxyUsage(
                    process_id=self.process_id,
                    rows=rows,
                    at=at,
                    sessions=sessions,
                    idle_minutes=self.session_idle_minutes,
                )
            )
        return len(rows)

    async def run_forever(self) -> None:
        leases = asyncio.create_task(self.leases.run_forever())
        try:
            while True:
                await asyncio.sleep(self.flush_interval)
                try:
                    await asyncio.to_thread(self.flush)
                except Exception:
                    log.exception("flushing proxy usage failed")
        finally:
            leases.cancel()
            await asyncio.gather(leases, return_exceptions=True)

    async def aclose(self) -> None:
        try:
            await asyncio.to_thread(self.flush)
        except Exception:
            log.exception("final proxy usage flush failed")
        await self.leases.close()
        if self.fee_tally is not None:
            await self.fee_tally.aclose()
        await self.forwarder.aclose()
        if (aclose := getattr(self.signal, "aclose", None)) is not None:
            await aclose()
