"""Load balancing through the real forwarding path against real, differently behaved upstreams.

Every test drives ``ProxyRuntime.forward`` (balancer pick, target check, aiohttp forwarder,
retry on another instance, ejection) against local aiohttp servers on 127.0.0.1 that are
fast, slow, failing (503), flaky or dead (a port nobody listens on). The caller's pool is
injected into the runtime's cache, so each upstream can behave on its own, unlike sandbox
instances. One event loop per test (``asyncio.run``); servers and the forwarder's client
session are closed at the end of each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from domain.balancing import (
    EQUAL_WEIGHTED,
    LEAST_CONNECTIONS,
    LEAST_RESPONSE_TIME,
    ROUND_ROBIN,
    WEIGHTED_ROUND_ROBIN,
    Backend,
    LoadTracker,
)
from infrastructure.proxy.forwarder import UpstreamConnectError, UpstreamTimeoutError
from infrastructure.proxy.runtime import ProxyRuntime, _Pool
from infrastructure.proxy.targets import SANDBOX_PROVIDER, Endpoint
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock
from tests.support.pg import free_port

USER = "user-balancing"
FAR = 3600.0  # seconds: injected pool and strategy never go stale during a test
WAIT = 5.0  # seconds a test waits for something that should happen at once


class FakeClock:
    """The balancer's monotonic clock, moved by hand (ejection expiry without waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(eq=False)
class Server:
    """One upstream instance: a real HTTP server with its own behaviour, or a dead port."""

    name: str
    delay: float = 0.0  # seconds before the answer (slow upstream)
    failing: bool = False  # answer 503 while set (flip it to recover)
    fail_first: int = 0  # answer 503 to the first N requests, then 200 (flaky)
    dead: bool = False  # nothing listens on the port
    vram_gb: float = 24.0
    price: int = 0  # micro-USD per hour
    stream: bool = False  # answer in two chunks, the second one after ``go_on``
    hits: int = 0  # requests that reached the server
    port: int = 0
    go_on: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing or self.hits <= self.fail_first:
            return web.Response(status=503, text=f"{self.name} unavailable")
        if self.stream:
            return await self._stream(request)
        return web.Response(text=self.name)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/plain"
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first\n")
        await asyncio.sleep(0.05)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT):
                await self.go_on.wait()  # the test sets it once it has the first chunk
        await response.write(b"second\n")
        self.finished.set()
        await response.write_eof()
        return response

    async def start(self) -> None:
        if self.dead:
            self.port = free_port()
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        self.go_on.set()
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, SANDBOX_PROVIDER, "127.0.0.1", self.port)

    @property
    def backend(self) -> Backend:
        return Backend(self.name, SANDBOX_PROVIDER, self.vram_gb, self.price)


@contextlib.asynccontextmanager
async def proxy(
    container: Container,
    servers: list[Server],
    strategy: str,
    *,
    tracker: LoadTracker | None = None,
) -> AsyncIterator[ProxyRuntime]:
    """A ProxyRuntime whose caller ``USER`` has ``servers`` as running instances."""
    started: list[Server] = []
    runtime: ProxyRuntime | None = None
    try:
        for server in servers:
            await server.start()
            started.append(server)
        runtime = ProxyRuntime(
            container.db,
            container.ledger,
            default_strategy=ROUND_ROBIN,
            price=0,
            lease_amount=1_000_000,
            allow_private=False,
            connect_timeout=2.0,
            default_timeout=10.0,
            flush_interval=60.0,
            clock=container.ledger.clock,
        )
        if tracker is not None:
            runtime.tracker = tracker
        runtime._pools[USER] = _Pool(
            time.monotonic() + FAR,
            [s.endpoint for s in servers],
            [s.backend for s in servers],
        )
        runtime._strategies[USER] = (time.monotonic() + FAR, strategy)
        yield runtime
    finally:
        if runtime is not None:
            await runtime.forwarder.aclose()
        for server in started:
            await server.stop()


@dataclass(frozen=True)
class Answer:
    instance_id: str
    status: int
    body: str


async def request(runtime: ProxyRuntime, timeout: float = WAIT) -> Answer:
    """One proxied request through the pool; the body is read and the upstream closed."""
    upstream = await runtime.forward(
        USER, method="GET", headers={}, body=None, timeout=timeout, path="/v1/work"
    )
    ok = False
    try:
        body = await upstream.response.read()
        ok = upstream.response.status < 500
    finally:
        upstream.done(ok)
    answer = Answer(upstream.endpoint.instance_id, upstream.response.status, body.decode())
    if answer.status == 200:
        assert answer.body == answer.instance_id  # the endpoint named is the one that answered
    return answer


async def sequential(runtime: ProxyRuntime, n: int) -> list[Answer]:
    return [await request(runtime) for _ in range(n)]


def assert_idle(runtime: ProxyRuntime) -> None:
    """Nothing left in flight: every attempt and every granted retry was reported."""
    assert runtime.tracker.active == 0
    assert runtime.tracker.retries_in_flight == 0
    assert all(load.active == 0 for load in runtime.tracker.snapshot().values())


class _Absent:
    ejected = False


_NO_LOAD = _Absent()  # stands for an instance the tracker has not seen yet


@pytest.fixture
def sqlite_container(sqlite_settings: Settings, clock: FixedClock) -> Iterator[Container]:
    c = bootstrap(sqlite_settings, clock=clock)
    try:
        yield c
    finally:
        c.close()


# ------------------------------------------------------------------------- distribution


def test_round_robin_rotates_evenly_over_fast_upstreams(container: Container) -> None:
    servers = [Server("a"), Server("b"), Server("c")]

    async def scenario() -> None:
        async with proxy(container, servers, ROUND_ROBIN) as runtime:
            answers = await sequential(runtime, 30)
            assert_idle(runtime)
        assert [a.instance_id for a in answers] == ["a", "b", "c"] * 10
        assert {a.status for a in answers} == {200}
        assert [s.hits for s in servers] == [10, 10, 10]

    asyncio.run(scenario())


def test_weighted_round_robin_matches_the_weights_in_every_period(
    sqlite_container: Container,
) -> None:
    servers = [
        Server("big", vram_gb=12, price=1_000_000),  # 12 GB at $1/h
        Server("mid", vram_gb=8, price=1_000_000),  # 8 GB at $1/h
        Server("small", vram_gb=6, price=2_000_000),  # 6 GB at $2/h
    ]
    weights = {s.name: s.backend.weight for s in servers}
    assert weights == {"big": 6, "mid": 4, "small": 2}  # different weights, period 12
    period = sum(weights.values())

    async def scenario() -> None:
        async with proxy(sqlite_container, servers, WEIGHTED_ROUND_ROBIN) as runtime:
            answers = await sequential(runtime, 3 * period)
            assert_idle(runtime)
        for start in range(0, 3 * period, period):
            counts = Counter(a.instance_id for a in answers[start : start + period])
            assert counts == weights
        # Smooth: the heaviest never answers more than twice in a row.
        names = [a.instance_id for a in answers]
        assert all(names[i : i + 3] != ["big"] * 3 for i in range(len(names) - 2))
        assert [s.hits for s in servers] == [3 * w for w in weights.values()]

    asyncio.run(scenario())


def test_least_connections_sends_less_to_a_slow_upstream_under_concurrency(
    sqlite_container: Container,
) -> None:
    servers = [Server("slow", delay=0.15), Server("fast1"), Server("fast2")]
    total, concurrency = 60, 12
    tracker = LoadTracker(rng=random.Random(1))

    async def scenario() -> None:
        async with proxy(sqlite_container, servers, LEAST_CONNECTIONS, tracker=tracker) as rt:
            queue = list(range(total))

            async def worker() -> list[Answer]:
                out = []
                while queue:
                    queue.pop()
                    out.append(await request(rt))
                return out

            done = await asyncio.gather(*(worker() for _ in range(concurrency)))
            assert_idle(rt)
        answers = [a for batch in done for a in batch]
        assert len(answers) == total
        assert {a.status for a in answers} == {200}
        counts = Counter(a.instance_id for a in answers)
        # Round robin would give it 20 (a third). Power of two choices keeps taking the fast
        # ones while the slow one holds connections: it gets well under a quarter.
        assert counts["slow"] < total // 4, counts
        assert counts["slow"] >= 1, counts  # it is not excluded either

    asyncio.run(scenario())


def test_least_response_time_prefers_fast_upstreams_after_warm_up(
    sqlite_container: Container,
) -> None:
    servers = [Server("fast1"), Server("slow", delay=0.08), Server("fast2")]

    async def scenario() -> None:
        async with proxy(sqlite_container, servers, LEAST_RESPONSE_TIME) as runtime:
            warm_up = await sequential(runtime, 6)
            # Never measured scores 0: each instance is tried once first.
            assert {a.instance_id for a in warm_up[:3]} == {"fast1", "slow", "fast2"}
            ewma = runtime.tracker.snapshot()["slow"].ewma_ms
            assert ewma >= 70.0  # measured through the real path: ~80 ms
            answers = await sequential(runtime, 40)
            assert_idle(runtime)
        counts = Counter(a.instance_id for a in answers)
        assert counts["slow"] <= 2, counts
        assert counts["fast1"] + counts["fast2"] >= 38, counts

    asyncio.run(scenario())


def test_equal_weighted_evens_totals_after_a_strategy_switch(container: Container) -> None:
    servers = [
        Server("big", vram_gb=12, price=1_000_000),
        Server("mid", vram_gb=8, price=1_000_000),
        Server("small", vram_gb=6, price=2_000_000),
    ]

    async def scenario() -> None:
        async with proxy(container, servers, WEIGHTED_ROUND_ROBIN) as runtime:
            first = Counter(a.instance_id for a in await sequential(runtime, 12))
            assert first == {"big": 6, "mid": 4, "small": 2}  # uneven load to start from
            runtime.set_strategy(USER, "Equal_Weighted ")  # stored in user_preferences
            runtime._strategies.pop(USER)  # read it back from the database
            assert await runtime.strategy(USER) == EQUAL_WEIGHTED
            assert runtime.current_strategy(USER) == EQUAL_WEIGHTED
            after = await sequential(runtime, 6)
            # The load was kept: the least used catch up first (small +4, mid +2, big +0).
            assert Counter(a.instance_id for a in after) == {"small": 4, "mid": 2}
            more = await sequential(runtime, 9)
            assert Counter(a.instance_id for a in more) == {"big": 3, "mid": 3, "small": 3}
            totals = {iid: load.total_requests for iid, load in runtime.tracker.snapshot().items()}
            assert totals == {"big": 9, "mid": 9, "small": 9}
            assert_idle(runtime)
        assert [s.hits for s in servers] == [9, 9, 9]

    asyncio.run(scenario())


# ----------------------------------------------------------------------- failures, ejection


def test_dead_upstream_is_retried_around_then_ejected(sqlite_container: Container) -> None:
    servers = [Server("a"), Server("dead", dead=True), Server("b")]

    async def scenario() -> None:
        async with proxy(sqlite_container, servers, ROUND_ROBIN) as runtime:
            tracker = runtime.tracker
            answers: list[Answer] = []
            while not tracker.snapshot().get("dead", _NO_LOAD).ejected:
                answers.append(await request(runtime))
                assert len(answers) <= 20, "the dead upstream was never ejected"
            dead = tracker.snapshot()["dead"]
            # Ejected after exactly 5 consecutive connect errors, none of them seen by the
            # client: each was retried on a live instance.
            assert (dead.total_requests, dead.total_errors) == (5, 5)
            assert dead.consecutive_failures == 5
            assert 25.0 < dead.ejected_for_s <= 30.0
            assert {a.status for a in answers} == {200}
            assert {a.instance_id for a in answers} == {"a", "b"}
            # While ejected it gets no attempt at all.
            answers += await sequential(runtime, 30)
            assert tracker.snapshot()["dead"].total_requests == 5
            assert {a.status for a in answers} == {200}
            assert servers[0].hits + servers[2].hits == len(answers)
            assert_idle(runtime)

    asyncio.run(scenario())


def test_failing_upstream_is_retried_ejected_and_recovers(sqlite_container: Container) -> None:
    servers = [Server("a"), Server("flaky", failing=True), Server("b")]
    bad = servers[1]
    clock = FakeClock()

    async def scenario() -> None:
        tracker = LoadTracker(clock=clock)
        async with proxy(sqlite_container, servers, ROUND_ROBIN, tracker=tracker) as runtime:
            answers = await sequential(runtime, 10)
            assert {a.status for a in answers} == {200}  # each 503 was retried elsewhere
            assert {a.instance_id for a in answers} == {"a", "b"}
            assert bad.hits == 5
            load = tracker.snapshot()["flaky"]
            assert load.ejected
            assert load.consecutive_failures == 5
            assert (load.total_requests, load.total_errors) == (5, 5)

            await sequential(runtime, 12)
            assert bad.hits == 5  # ejected: no traffic

            # Back after 30 s, still failing: its first attempt fails and ejects it again at
            # once (on probation, and its consecutive failures were never reset).
            clock.advance(31)
            assert not tracker.snapshot()["flaky"].ejected
            answers = await sequential(runtime, 6)
            assert {a.status for a in answers} == {200}
            assert bad.hits == 6
            assert tracker.snapshot()["flaky"].ejected

            # Healthy again: after the ejection it takes its full share.
            bad.failing = False
            clock.advance(31)
            answers = await sequential(runtime, 30)
            assert {a.status for a in answers} == {200}
            assert Counter(a.instance_id for a in answers) == {"a": 10, "flaky": 10, "b": 10}
            assert bad.hits == 16
            load = tracker.snapshot()["flaky"]
            assert not load.ejected
            assert load.consecutive_failures == 0
            assert_idle(runtime)

    asyncio.run(scenario())


def test_flaky_upstream_below_the_threshold_is_not_ejected(sqlite_container: Container) -> None:
    servers = [Server("a"), Server("flaky", fail_first=4)]

    async def scenario() -> None:
        async with proxy(sqlite_container, servers, ROUND_ROBIN) as runtime:
            answers = await sequential(runtime, 20)
            assert {a.status for a in answers} == {200}
            load = runtime.tracker.snapshot()["flaky"]
            # 4 consecutive failures (< 5), then successes reset the count: never ejected.
            assert (load.total_errors, load.consecutive_failures, load.ejected) == (4, 0, False)
            assert Counter(a.instance_id for a in answers[-10:]) == {"a": 5, "flaky": 5}
            assert_idle(runtime)

    asyncio.run(scenario())


def test_never_ejects_all_failing_upstreams_answer_their_503(
    sqlite_container: Container,
) -> None:
    servers = [Server("a", failing=True), Server("b", failing=True), Server("c", failing=True)]

    async def scenario() -> None:
        async with proxy(sqlite_container, servers, ROUND_ROBIN) as runtime:
            answers = await sequential(runtime, 10)
            # Each request tried every instance once, then the last 503 went through.
            assert {a.status for a in answers} == {503}
            assert all(a.body == f"{a.instance_id} unavailable" for a in answers)
            assert [s.hits for s in servers] == [10, 10, 10]
            snapshot = runtime.tracker.snapshot()
            assert all(snapshot[s.name].ejected for s in servers)
            pool = await runtime.pool(USER)
            picked = runtime.tracker.pick(ROUND_ROBIN, pool.backends, key=USER)
            assert picked.instance_id in {"a", "b", "c"}
            # Still all ejected, the pool is used as a whole: a recovered one answers at once.
            servers[1].failing = False
            answers = await sequential(runtime, 3)
            assert {a.status for a in answers} == {200}
            assert {a.instance_id for a in answers} == {"b"}
            assert_idle(runtime)

    asyncio.run(scenario())


class BudgetWatch(LoadTracker):
    """Records every retry the budget granted or refused, with the load at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.grants: list[tuple[int, int]] = []  # (retries in flight after, requests active)
        self.refusals = 0
        self.peak_retries = 0

    def try_retry(self) -> bool:
        active = self.active
        granted = super().try_retry()
        if granted:
            self.grants.append((self.retries_in_flight, active))
            self.peak_retries = max(self.peak_retries, self.retries_in_flight)
        else:
            self.refusals += 1
        return granted


def test_retry_budget_bounds_retries_under_concurrency(sqlite_container: Container) -> None:
    # The live one is slow enough that every dead connect error is in before any live
    # answer: the active count (and so the budget) only shrinks while retries are asked for.
    servers = [Server("live", delay=0.3), Server("dead", dead=True)]
    total = 40
    tracker = BudgetWatch()

    async def scenario() -> list[Answer | BaseException]:
        async with proxy(sqlite_container, servers, ROUND_ROBIN, tracker=tracker) as runtime:
            outcomes = await asyncio.gather(
                *(request(runtime) for _ in range(total)), return_exceptions=True
            )
            assert_idle(runtime)
            return outcomes

    outcomes = asyncio.run(scenario())
    answers = [o for o in outcomes if isinstance(o, Answer)]
    failures = [o for o in outcomes if not isinstance(o, Answer)]
    assert all(isinstance(f, UpstreamConnectError) for f in failures), failures
    assert {a.instance_id for a in answers} == {"live"}
    assert {a.status for a in answers} == {200}
    dead = tracker.snapshot()["dead"]
    assert dead.total_requests == total // 2  # round robin: half went to the dead one first
    assert tracker.refusals + len(tracker.grants) == total // 2
    # Each grant kept retries in flight within 20 % of the requests in flight.
    assert tracker.grants, "no retry was granted"
    for in_flight, active in tracker.grants:
        assert in_flight <= max(1, int(active * 0.2)), tracker.grants
    assert tracker.peak_retries <= total // 5
    # The budget was binding: the refused ones reached the client as connect errors.
    assert len(failures) == tracker.refusals >= total // 2 - total // 5
    assert len(answers) == total // 2 + len(tracker.grants) == servers[0].hits


# ------------------------------------------------------------------- timeouts, streaming


def test_timeout_gives_504_counts_as_failure_and_is_not_retried(
    sqlite_container: Container,
) -> None:
    servers = [Server("slow", delay=0.5), Server("fast")]

    async def scenario() -> None:
        async with proxy(sqlite_container, servers, ROUND_ROBIN) as runtime:
            started = time.monotonic()
            with pytest.raises(UpstreamTimeoutError) as caught:
                await request(runtime, timeout=0.1)
            assert time.monotonic() - started < 0.4
            assert caught.value.status == 504
            load = runtime.tracker.snapshot()["slow"]
            assert (load.total_requests, load.total_errors, load.consecutive_failures) == (1, 1, 1)
            assert load.ewma_ms == 0.0  # a failure never feeds the latency average
            assert servers[1].hits == 0  # the request may have been delivered: no retry
            assert_idle(runtime)

    asyncio.run(scenario())


def test_streamed_chunks_arrive_before_the_upstream_finishes(
    sqlite_container: Container,
) -> None:
    server = Server("stream", stream=True)

    async def scenario() -> None:
        async with proxy(sqlite_container, [server], ROUND_ROBIN) as runtime:
            upstream = await runtime.forward(
                USER, method="GET", headers={}, body=None, timeout=WAIT, path="/stream"
            )
            assert upstream.response.status == 200
            assert runtime.tracker.snapshot()["stream"].active == 1
            chunks = []
            async for chunk in upstream.chunks():
                chunks.append(chunk)
                if len(chunks) == 1:
                    assert chunk == b"first\n"
                    assert not server.finished.is_set()  # the upstream is still writing
                    server.go_on.set()
            assert b"".join(chunks) == b"first\nsecond\n"
            assert server.finished.is_set()
            load = runtime.tracker.snapshot()["stream"]
            assert (load.total_requests, load.total_errors) == (1, 0)
            assert_idle(runtime)

    asyncio.run(scenario())
