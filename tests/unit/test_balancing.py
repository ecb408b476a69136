"""The load balancer: each strategy's exact choices, ejection, the retry budget, usage drains."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.balancing import (
    STRATEGIES,
    Backend,
    InstanceLoad,
    LoadTracker,
    NoBackendError,
    UnknownStrategyError,
    UsageCounts,
    backend_weight,
    check_strategy,
)
from domain.errors import DomainError, InvalidArgumentError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gpu(iid: str, vram_gb: float = 24.0, price: int = 0) -> Backend:
    return Backend(instance_id=iid, provider="sandbox", vram_gb=vram_gb, price_per_hour=price)


ABC = [gpu("a"), gpu("b"), gpu("c")]


def tracker(clock: FakeClock | None = None, seed: int = 7) -> LoadTracker:
    return LoadTracker(clock=clock or FakeClock(), rng=random.Random(seed))


def picks(lt: LoadTracker, strategy: str, backends: list[Backend], n: int, key: str = "u") -> str:
    return "".join(lt.pick(strategy, backends, key=key).instance_id for _ in range(n))


def serve(lt: LoadTracker, iid: str, latency_ms: float = 10.0, *, ok: bool = True) -> None:
    lt.started(iid)
    lt.finished(iid, latency_ms=latency_ms, ok=ok)


def fail(lt: LoadTracker, iid: str, times: int) -> None:
    for _ in range(times):
        serve(lt, iid, ok=False)


# -- names and errors -------------------------------------------------------------------------


def test_strategy_names_are_exact() -> None:
    assert STRATEGIES == (
        "round_robin",
        "equal_weighted",
        "weighted_round_robin",
        "least_connections",
        "least_response_time",
    )
    for name in STRATEGIES:
        assert check_strategy(name) == name


@pytest.mark.parametrize("name", ["", "random", "ROUND_ROBIN", "round-robin", " round_robin"])
def test_unknown_strategy_is_a_400_listing_the_valid_names(name: str) -> None:
    with pytest.raises(UnknownStrategyError) as caught:
        check_strategy(name)
    err = caught.value
    assert isinstance(err, DomainError)
    assert (err.status, err.title) == (400, "Unknown strategy")
    assert err.message == (
        f"unknown strategy {name!r}; expected one of round_robin, equal_weighted, "
        "weighted_round_robin, least_connections, least_response_time"
    )
    with pytest.raises(UnknownStrategyError):
        tracker().pick(name, ABC, key="u")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_no_backend_is_a_503(strategy: str) -> None:
    lt = tracker()
    with pytest.raises(NoBackendError) as caught:
        lt.pick(strategy, [], key="u")
    assert (caught.value.status, caught.value.title) == (503, "No instance available")
    with pytest.raises(NoBackendError):
        lt.pick(strategy, ABC, key="u", exclude={"a", "b", "c"})


def test_backend_rejects_impossible_figures() -> None:
    for vram in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError):
            gpu("x", vram_gb=vram)
    with pytest.raises(InvalidArgumentError):
        gpu("x", price=-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eject_after": 0},
        {"eject_for": -1.0},
        {"alpha": 0.0},
        {"alpha": 1.5},
        {"retry_ratio": -0.1},
    ],
)
def test_tracker_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidArgumentError):
        LoadTracker(**kwargs)  # type: ignore[arg-type]


# -- weights ----------------------------------------------------------------------------------


def test_weight_formula_examples() -> None:
    assert backend_weight(80.0, 2_000_000) == 27  # 80 / 3
    assert backend_weight(24.0, 400_000) == 17  # 24 / 1.4 = 17.14
    assert backend_weight(24.0, 0) == 24
    assert backend_weight(24.0, 1_000_000) == 12
    assert backend_weight(25.0, 1_000_000) == 13  # 12.5 rounds half up
    assert backend_weight(0.0, 0) == 1  # never below 1
    assert backend_weight(8.0, 50_000_000) == 1
    assert gpu("x", 48.0, 1_000_000).weight == 24


@given(
    st.floats(0, 2048, allow_nan=False),
    st.floats(0, 2048, allow_nan=False),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
)
def test_weight_is_monotone(v1: float, v2: float, p1: int, p2: int) -> None:
    low_v, high_v = sorted((v1, v2))
    cheap, dear = sorted((p1, p2))
    assert backend_weight(low_v, cheap) <= backend_weight(high_v, cheap)
    assert backend_weight(low_v, dear) <= backend_weight(high_v, dear)
    assert backend_weight(low_v, cheap) >= backend_weight(low_v, dear)
    assert backend_weight(high_v, cheap) >= backend_weight(high_v, dear) >= 1


# -- round robin ------------------------------------------------------------------------------


def test_round_robin_cycles_in_the_given_order() -> None:
    assert picks(tracker(), "round_robin", ABC, 7) == "abcabca"


def test_round_robin_cursors_are_per_user() -> None:
    lt = tracker()
    assert picks(lt, "round_robin", ABC, 2, key="alice") == "ab"
    assert picks(lt, "round_robin", ABC, 1, key="bob") == "a"
    assert picks(lt, "round_robin", ABC, 2, key="alice") == "ca"
    assert picks(lt, "round_robin", ABC, 3, key="bob") == "bca"


def test_round_robin_skips_excluded_and_keeps_its_place() -> None:
    lt = tracker()
    assert picks(lt, "round_robin", ABC, 1) == "a"
    assert lt.pick("round_robin", ABC, key="u", exclude={"b"}).instance_id == "c"
    assert picks(lt, "round_robin", ABC, 4) == "abca"
    assert lt.pick("round_robin", ABC, key="u", exclude=frozenset({"b", "c"})).instance_id == "a"


# -- equal weighted ---------------------------------------------------------------------------


def test_equal_weighted_without_accounting_rotates() -> None:
    assert picks(tracker(), "equal_weighted", ABC, 6) == "abcabc"


def test_equal_weighted_catches_up_then_rotates() -> None:
    lt = tracker()
    for iid, n in (("a", 3), ("b", 1)):
        for _ in range(n):
            serve(lt, iid)
    chosen = ""
    for _ in range(8):
        b = lt.pick("equal_weighted", ABC, key="u")
        serve(lt, b.instance_id)
        chosen += b.instance_id
    assert chosen == "cbcbcabc"
    totals = {iid: load.total_requests for iid, load in lt.snapshot().items()}
    assert totals == {"a": 4, "b": 4, "c": 4}


def test_equal_weighted_counts_requests_in_flight() -> None:
    lt = tracker()
    serve(lt, "a")
    serve(lt, "b")
    lt.started("c")
    lt.started("c")  # c: 2 in flight, a and b: 1 finished each
    assert picks(lt, "equal_weighted", ABC, 1) == "a"
    lt.started("a")  # a: 2
    assert picks(lt, "equal_weighted", ABC, 1) == "b"


@given(st.lists(st.integers(0, 20), min_size=1, max_size=8), st.integers(1, 60))
def test_equal_weighted_evens_out_totals(history: list[int], rounds: int) -> None:
    lt = tracker()
    backends = [gpu(f"i{n}") for n in range(len(history))]
    for backend, n in zip(backends, history, strict=True):
        for _ in range(n):
            serve(lt, backend.instance_id)
    for _ in range(sum(max(history) - n for n in history) + rounds * len(backends)):
        serve(lt, lt.pick("equal_weighted", backends, key="u").instance_id)
    totals = [lt.snapshot()[b.instance_id].total_requests for b in backends]
    assert max(totals) - min(totals) == 0


# -- smooth weighted round robin --------------------------------------------------------------


def test_smooth_wrr_matches_nginx_sequence() -> None:
    # nginx: weights a=5, b=1, c=1 give { a, a, b, a, c, a, a } each period.
    pool = [gpu("a", 5.0), gpu("b", 1.0), gpu("c", 1.0)]
    assert [b.weight for b in pool] == [5, 1, 1]
    assert picks(tracker(), "weighted_round_robin", pool, 14) == "aabacaa" * 2


def test_smooth_wrr_interleaves_and_is_per_user() -> None:
    pool = [gpu("a", 3.0), gpu("b", 2.0)]
    lt = tracker()
    assert picks(lt, "weighted_round_robin", pool, 3, key="alice") == "aba"
    assert picks(lt, "weighted_round_robin", pool, 5, key="bob") == "ababa"
    assert picks(lt, "weighted_round_robin", pool, 2, key="alice") == "ba"


def test_smooth_wrr_proportions_follow_vram_and_price() -> None:
    pool = [gpu("big", 80.0, 2_000_000), gpu("cheap", 24.0, 400_000), gpu("small", 8.0, 0)]
    weights = {b.instance_id: b.weight for b in pool}
    assert weights == {"big": 27, "cheap": 17, "small": 8}
    lt = tracker()
    counts = Counter(lt.pick("weighted_round_robin", pool, key="u").instance_id for _ in range(520))
    assert counts == {"big": 270, "cheap": 170, "small": 80}


@given(st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_smooth_wrr_gives_each_backend_its_weight_per_period(weights: list[int]) -> None:
    pool = [gpu(f"i{n}", float(w)) for n, w in enumerate(weights)]
    lt = tracker()
    for _ in range(2):
        seen = Counter(
            lt.pick("weighted_round_robin", pool, key="u").instance_id for _ in range(sum(weights))
        )
        assert seen == {b.instance_id: w for b, w in zip(pool, weights, strict=True)}


def test_forget_resets_smooth_wrr_state() -> None:
    pool = [gpu("a", 5.0), gpu("b", 1.0), gpu("c", 1.0)]
    lt = tracker()
    assert picks(lt, "weighted_round_robin", pool, 2) == "aa"  # currents: a -4, b 2, c 2
    lt.forget("a")  # a starts again from 0: 5 beats b's 3
    assert picks(lt, "weighted_round_robin", pool, 1) == "a"


def test_smooth_wrr_skips_excluded() -> None:
    pool = [gpu("a", 5.0), gpu("b", 1.0), gpu("c", 1.0)]
    lt = tracker()
    got = "".join(
        lt.pick("weighted_round_robin", pool, key="u", exclude={"a"}).instance_id for _ in range(4)
    )
    assert got == "bcbc"


# -- least connections ------------------------------------------------------------------------


def test_least_connections_never_picks_the_busiest_of_three() -> None:
    lt = tracker(seed=1)
    for _ in range(10):
        lt.started("a")
    counts = Counter(lt.pick("least_connections", ABC, key="u").instance_id for _ in range(3000))
    assert counts["a"] == 0
    assert set(counts) == {"b", "c"}
    assert 1300 < counts["b"] < 1700


def test_least_connections_of_two_takes_the_idle_one() -> None:
    lt = tracker(seed=2)
    lt.started("b")
    assert picks(lt, "least_connections", ABC[:2], 50) == "a" * 50
    assert picks(lt, "least_connections", ABC[1:2], 3) == "bbb"  # alone: taken anyway
    assert lt.pick("least_connections", ABC, key="u", exclude={"a", "c"}).instance_id == "b"


def test_least_connections_spreads_idle_load_with_a_seeded_rng() -> None:
    first = picks(tracker(seed=3), "least_connections", ABC * 2, 30)
    assert first == picks(tracker(seed=3), "least_connections", ABC * 2, 30)  # reproducible
    counts = Counter(picks(tracker(seed=4), "least_connections", ABC, 3000))
    assert min(counts.values()) > 850


def test_least_connections_follows_live_load() -> None:
    lt = tracker(seed=5)
    for _ in range(300):  # nothing finishes: p2c keeps the spread within one or two
        lt.started(lt.pick("least_connections", ABC, key="u").instance_id)
    active = [load.active for load in lt.snapshot().values()]
    assert sum(active) == 300
    assert max(active) - min(active) <= 2


# -- least response time ----------------------------------------------------------------------


def test_least_response_time_tries_unmeasured_first_then_the_fastest() -> None:
    lt = tracker()
    serve(lt, "a", 50.0)
    serve(lt, "b", 20.0)
    assert picks(lt, "least_response_time", ABC, 1) == "c"  # never measured: 0
    serve(lt, "c", 80.0)
    assert picks(lt, "least_response_time", ABC, 3) == "bbb"


def test_least_response_time_weighs_latency_by_active() -> None:
    lt = tracker()
    serve(lt, "a", 10.0)
    serve(lt, "b", 25.0)
    for _ in range(2):
        lt.started("a")  # a: 10 * 3 = 30 > b: 25 * 1
    assert picks(lt, "least_response_time", ABC[:2], 1) == "b"
    lt.finished("a", latency_ms=10.0, ok=True)  # a: 10 * 2 = 20 < 25
    assert picks(lt, "least_response_time", ABC[:2], 1) == "a"


def test_least_response_time_reacts_to_a_slow_instance() -> None:
    lt = tracker()
    serve(lt, "a", 10.0)
    serve(lt, "b", 12.0)
    assert picks(lt, "least_response_time", ABC[:2], 1) == "a"
    serve(lt, "a", 100.0)  # ewma 10 + 0.3 * 90 = 37
    assert lt.snapshot()["a"].ewma_ms == pytest.approx(37.0)
    assert picks(lt, "least_response_time", ABC[:2], 2) == "bb"


def test_least_response_time_ties_rotate() -> None:
    lt = tracker()
    assert picks(lt, "least_response_time", ABC, 6) == "abcabc"
    for iid in "abc":
        serve(lt, iid, 5.0)
    assert picks(lt, "least_response_time", ABC, 3) == "abc"


def test_ewma_first_sample_sets_it_and_failures_do_not_feed_it() -> None:
    lt = LoadTracker(clock=FakeClock(), alpha=0.5)
    serve(lt, "a", 100.0)
    assert lt.snapshot()["a"].ewma_ms == 100.0
    serve(lt, "a", 200.0)
    assert lt.snapshot()["a"].ewma_ms == 150.0
    serve(lt, "a", 1.0, ok=False)
    assert lt.snapshot()["a"].ewma_ms == 150.0


# -- ejection ---------------------------------------------------------------------------------


def test_five_failures_eject_for_thirty_seconds_then_traffic_returns() -> None:
    clock = FakeClock()
    lt = tracker(clock)
    fail(lt, "b", 4)
    assert picks(lt, "round_robin", ABC, 3) == "abc"
    fail(lt, "b", 1)
    snap = lt.snapshot()["b"]
    assert (snap.ejected, snap.ejected_for_s, snap.consecutive_failures) == (True, 30.0, 5)
    for strategy in STRATEGIES:
        got = [lt.pick(strategy, ABC, key=strategy).instance_id for _ in range(20)]
        assert "b" not in got
    clock.now += 29.5
    assert lt.snapshot()["b"].ejected_for_s == 0.5
    assert "b" not in picks(lt, "round_robin", ABC, 6)
    clock.now += 0.5
    assert lt.snapshot()["b"].ejected is False
    assert picks(lt, "round_robin", ABC, 6).count("b") == 2


def test_staggered_ejections_end_one_at_a_time() -> None:
    clock = FakeClock()
    lt = tracker(clock)
    fail(lt, "a", 5)
    clock.now += 10.0
    fail(lt, "b", 5)
    assert picks(lt, "round_robin", ABC, 2) == "cc"
    clock.now += 20.0  # a is back, b has 10 s left
    assert picks(lt, "round_robin", ABC, 4) == "acac"
    clock.now += 9.0
    assert picks(lt, "round_robin", ABC, 2) == "ac"
    clock.now += 1.0
    assert picks(lt, "round_robin", ABC, 3) == "abc"


def test_a_failure_on_probation_re_ejects_at_once() -> None:
    clock = FakeClock()
    lt = tracker(clock)
    fail(lt, "a", 5)
    clock.now += 30.0
    fail(lt, "a", 1)
    assert lt.snapshot()["a"].ejected is True
    clock.now += 30.0
    serve(lt, "a")  # a success ends probation and resets the count
    assert lt.snapshot()["a"].consecutive_failures == 0
    fail(lt, "a", 4)
    assert lt.snapshot()["a"].ejected is False
    fail(lt, "a", 1)
    assert lt.snapshot()["a"].ejected is True


def test_a_success_resets_the_failure_count() -> None:
    lt = tracker()
    fail(lt, "a", 4)
    serve(lt, "a")
    fail(lt, "a", 4)
    snap = lt.snapshot()["a"]
    assert (snap.ejected, snap.consecutive_failures, snap.total_errors) == (False, 4, 8)


def test_failures_while_ejected_neither_extend_nor_lift_it() -> None:
    clock = FakeClock()
    lt = tracker(clock)
    fail(lt, "a", 5)
    clock.now += 10.0
    fail(lt, "a", 3)
    serve(lt, "a")  # a late success from a request already in flight
    assert lt.snapshot()["a"].ejected_for_s == 20.0
    clock.now += 20.0
    fail(lt, "a", 1)  # still on probation: the success came while ejected
    assert lt.snapshot()["a"].ejected is True


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_never_all_ejected(strategy: str) -> None:
    clock = FakeClock()
    lt = tracker(clock)
    for iid in "abc":
        fail(lt, iid, 5)
    assert all(load.ejected for load in lt.snapshot().values())
    got = {lt.pick(strategy, ABC, key="u").instance_id for _ in range(30)}
    assert got <= {"a", "b", "c"}
    assert lt.pick(strategy, ABC, key="u", exclude={"a", "c"}).instance_id == "b"
    with pytest.raises(NoBackendError):
        lt.pick(strategy, ABC, key="u", exclude={"a", "b", "c"})


def test_only_the_non_ejected_get_traffic_while_one_is_left() -> None:
    lt = tracker()
    fail(lt, "a", 5)
    fail(lt, "b", 5)
    assert picks(lt, "round_robin", ABC, 4) == "cccc"
    # c excluded for a retry: the ejected ones are all that is left, so one of them is used.
    assert lt.pick("round_robin", ABC, key="u", exclude={"c"}).instance_id in {"a", "b"}


# -- the retry budget -------------------------------------------------------------------------


def test_a_request_alone_may_retry_once() -> None:
    lt = tracker()
    lt.started("a")
    lt.finished("a", latency_ms=5.0, ok=False)
    assert lt.active == 0
    assert lt.try_retry() is True
    assert lt.try_retry() is False
    lt.retry_done()
    assert lt.try_retry() is True


def test_retry_budget_is_a_fifth_of_active_requests() -> None:
    lt = tracker()
    for _ in range(14):
        lt.started("a")
    assert [lt.try_retry() for _ in range(3)] == [True, True, False]  # int(14 * 0.2) = 2
    assert lt.retries_in_flight == 2
    lt.started("b")  # 15 active: budget 3
    assert lt.try_retry() is True
    assert lt.try_retry() is False
    for _ in range(4):
        lt.retry_done()
    lt.retry_done()  # extra calls do not go negative
    assert lt.retries_in_flight == 0


def test_retry_ratio_is_configurable() -> None:
    lt = LoadTracker(retry_ratio=0.5)
    for _ in range(10):
        lt.started("a")
    assert sum(lt.try_retry() for _ in range(10)) == 5


# -- snapshots, drains, forgetting ------------------------------------------------------------


def test_snapshot_reports_live_figures() -> None:
    lt = tracker()
    lt.started("a")
    serve(lt, "a", 40.0)
    serve(lt, "a", 10.0, ok=False)
    assert lt.snapshot() == {
        "a": InstanceLoad(
            active=1,
            ewma_ms=40.0,
            consecutive_failures=1,
            ejected=False,
            ejected_for_s=0.0,
            total_requests=2,
            total_errors=1,
        )
    }


def test_drain_returns_usage_since_the_last_drain_and_resets_it() -> None:
    lt = tracker()
    serve(lt, "a", 10.0)
    serve(lt, "a", 30.5, ok=False)
    serve(lt, "b", 7.0)
    lt.started("c")  # in flight: not usage yet
    assert lt.drain() == {
        "a": UsageCounts(requests=2, errors=1, latency_ms_sum=40.5),
        "b": UsageCounts(requests=1, errors=0, latency_ms_sum=7.0),
    }
    assert lt.drain() == {}
    lt.finished("c", latency_ms=3.0, ok=True)
    assert lt.drain() == {"c": UsageCounts(1, 0, 3.0)}
    assert lt.snapshot()["a"].total_requests == 2  # lifetime totals survive drains


def test_forget_drops_the_instance_but_keeps_its_undrained_usage() -> None:
    lt = tracker()
    serve(lt, "a", 10.0)
    lt.started("a")
    lt.started("b")
    fail(lt, "a", 5)
    lt.forget("a")
    lt.forget("never-seen")
    assert set(lt.snapshot()) == {"b"}
    assert lt.active == 1
    assert picks(lt, "round_robin", ABC, 3) == "abc"  # no longer ejected either
    assert lt.drain() == {"a": UsageCounts(6, 5, 60.0)}
    assert lt.drain() == {}


def test_latency_is_clamped() -> None:
    lt = tracker()
    serve(lt, "a", -5.0)
    serve(lt, "a", float("nan"))
    serve(lt, "b", float("inf"))
    assert lt.drain() == {"a": UsageCounts(2, 0, 0.0), "b": UsageCounts(1, 0, 3_600_000.0)}


def test_finished_without_started_does_not_go_negative() -> None:
    lt = tracker()
    lt.finished("a", latency_ms=1.0, ok=True)
    assert lt.snapshot()["a"].active == 0
    assert lt.active == 0


def test_switching_strategy_keeps_the_load() -> None:
    lt = tracker()
    for _ in range(3):
        b = lt.pick("round_robin", ABC, key="u")
        lt.started(b.instance_id)
    lt.started("a")
    lt.finished("b", latency_ms=50.0, ok=True)
    assert {iid: s.active for iid, s in lt.snapshot().items()} == {"a": 2, "b": 0, "c": 1}
    assert picks(lt, "least_connections", ABC[:2], 5) == "bbbbb"
    assert picks(lt, "equal_weighted", ABC, 1) == "b"  # a: 2, b: 1, c: 1 -> b first from a
    assert picks(lt, "least_response_time", ABC, 1) == "c"  # unmeasured


def test_track_reports_once_and_times_itself() -> None:
    clock = FakeClock()
    lt = tracker(clock)
    handle = lt.track("a")
    assert lt.active == 1
    clock.now += 0.25
    handle.done()
    handle.done(ok=False)  # ignored
    assert lt.snapshot()["a"] == InstanceLoad(1 - 1, 250.0, 0, False, 0.0, 1, 0)
    with pytest.raises(RuntimeError), lt.track("b"):
        raise RuntimeError("boom")
    with lt.track("c") as t:
        t.done(12.0, ok=False)
    assert lt.drain() == {
        "a": UsageCounts(1, 0, 250.0),
        "b": UsageCounts(1, 1, 0.0),
        "c": UsageCounts(1, 1, 12.0),
    }


# -- properties -------------------------------------------------------------------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["pick", "ok", "fail", "start", "tick", "forget"]),
        st.integers(0, 5),
        st.sampled_from(STRATEGIES),
        st.frozensets(st.integers(0, 5), max_size=6),
    ),
    max_size=80,
)


@given(operations)
def test_pick_never_returns_excluded_and_never_raises_for_ejection(
    ops: list[tuple[str, int, str, frozenset[int]]],
) -> None:
    clock = FakeClock()
    lt = LoadTracker(clock=clock, eject_after=2, eject_for=5.0, rng=random.Random(0))
    pool = [gpu(f"i{n}", float(n * 4 + 1), n * 100_000) for n in range(6)]
    for op, n, strategy, excluded in ops:
        iid = f"i{n}"
        if op == "pick":
            exclude = {f"i{m}" for m in excluded}
            if len(exclude) == len(pool):
                with pytest.raises(NoBackendError):
                    lt.pick(strategy, pool, key=iid, exclude=exclude)
            else:
                chosen = lt.pick(strategy, pool, key=iid, exclude=exclude)
                assert chosen in pool
                assert chosen.instance_id not in exclude
        elif op == "ok":
            serve(lt, iid, float(n))
        elif op == "fail":
            serve(lt, iid, ok=False)
        elif op == "start":
            lt.started(iid)
        elif op == "tick":
            clock.now += n
        else:
            lt.forget(iid)
    assert lt.active == sum(load.active for load in lt.snapshot().values())


@given(st.integers(1, 16), st.integers(1, 50), st.sampled_from(["round_robin", "equal_weighted"]))
def test_rotations_visit_every_backend_once_per_round(
    size: int, rounds: int, strategy: str
) -> None:
    pool = [gpu(f"i{n}") for n in range(size)]
    lt = tracker()
    for _ in range(rounds):
        assert sorted(picks_list(lt, strategy, pool, size)) == sorted(b.instance_id for b in pool)


def picks_list(lt: LoadTracker, strategy: str, pool: list[Backend], n: int) -> list[str]:
    return [lt.pick(strategy, pool, key="u").instance_id for _ in range(n)]
