"""GpuInstance lifecycle and exact per-second metering."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.instances import GpuInstance, InstanceStateError, due_between

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _instance(price: int = 1_800_000) -> GpuInstance:
    return GpuInstance(
        instance_id=uuid.uuid4(),
        owner="u1",
        provider="sandbox",
        offer_id="o1",
        gpu_model="RTX 4090",
        num_gpus=1,
        price_per_hour=price,
        provider_price_per_hour=price,
        hold_id="h1",
        image="img",
        at=T0,
    )


def test_due_is_per_second_and_exact() -> None:
    assert due_between(3_600_000, T0, T0 + timedelta(seconds=1)) == 1_000
    assert due_between(3_600_000, T0, T0 + timedelta(hours=2)) == 7_200_000
    assert due_between(1, T0, T0 + timedelta(minutes=59)) == 0  # floored, never rounded up
    assert due_between(3_600_000, T0, T0 - timedelta(seconds=5)) == 0


@given(
    price=st.integers(min_value=0, max_value=10**9),
    cuts=st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=20),
)
def test_billing_in_steps_never_drifts(price: int, cuts: list[int]) -> None:
    """Charging the difference of running totals adds up to the one-shot amount."""
    moments = [T0 + timedelta(microseconds=c) for c in sorted(cuts)]
    billed = 0
    for moment in moments:
        total = due_between(price, T0, moment)
        assert total >= billed
        billed = total
    assert billed == due_between(price, T0, moments[-1])


def test_lifecycle_and_billing_window() -> None:
    gpu = _instance(price=3_600_000)  # 1 USD / hour = 1,000 micro-USD per second
    assert gpu.due(T0 + timedelta(hours=1)) == 0  # not running yet: nothing due
    gpu.mark_provisioning("vast-1", now=T0 + timedelta(seconds=5))
    gpu.mark_running("127.0.0.1", 8000, now=T0 + timedelta(seconds=60))
    assert not gpu.mark_running("127.0.0.1", 8000, now=T0 + timedelta(seconds=61))
    assert gpu.due(T0 + timedelta(seconds=90)) == 30_000
    gpu.record_metering(30_000, T0 + timedelta(seconds=90), "h1")
    with pytest.raises(InstanceStateError):
        gpu.record_metering(10, T0 + timedelta(seconds=91), "h1")
    assert gpu.request_stop("user asked", "u1", now=T0 + timedelta(seconds=120))
    assert not gpu.request_stop("again", "u1", now=T0 + timedelta(seconds=121))
    assert gpu.due(T0 + timedelta(hours=5)) == 60_000  # billing ended at the stop request
    gpu.mark_terminated("destroyed", now=T0 + timedelta(seconds=200))
    with pytest.raises(InstanceStateError):
        gpu.mark_terminated("twice", now=T0 + timedelta(seconds=201))
    assert [type(e).__name__ for e in gpu.collect_events()] == [
        "Requested",
        "Provisioning",
        "Running",
        "Metered",
        "StopRequested",
        "Terminated",
    ]


def test_failed_rentals_cannot_start() -> None:
    gpu = _instance()
    gpu.mark_failed("no_such_ask", now=T0)
    assert not gpu.is_live
    with pytest.raises(InstanceStateError):
        gpu.mark_running("h", 1, now=T0)
    with pytest.raises(InstanceStateError):
        gpu.mark_provisioning("x", now=T0)


def test_reservation_spread_interleaves_providers_and_sites() -> None:
    from domain.marketplace import Offer
    from domain.services.marketplace import spread

    def offer(provider: str, location: str, price: int) -> Offer:
        return Offer(
            provider, f"{provider}-{location}-{price}", "RTX 4090", 1, 24.0, price, location, 1.0
        )

    offers = sorted(
        [offer("a", "US", 1), offer("a", "US", 2), offer("a", "EU", 3), offer("b", "US", 4)],
        key=lambda o: o.price_per_hour,
    )
    ordered = spread(offers, "round_robin")
    assert [o.offer_id for o in ordered[:3]] == ["a-US-1", "a-EU-3", "b-US-4"]
    assert sorted(o.offer_id for o in ordered) == sorted(o.offer_id for o in offers)
    assert spread(offers, "least_connections") == offers  # cheapest first
