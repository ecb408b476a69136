"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from domain.services.ledger import LedgerService
from tests.conftest import FixedClock
from tests.fakes.memory_ledger import memory_ledger


@pytest.fixture
def ledger(clock: FixedClock) -> Iterator[LedgerService]:
    """The ledger service on the in-memory event store (tests/fakes/memory_ledger.py)."""
    service = memory_ledger(clock=clock)
    try:
        yield service
    finally:
        service.close()
