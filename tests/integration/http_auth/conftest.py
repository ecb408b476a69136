"""The auth matrix's clients: the real app (Litestar's test client) on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infrastructure.settings import Settings
from tests.support.http import test_client
from tests.support.http_auth import Client, auth_settings


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with test_client(auth_settings(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def shared_client(module_settings: Settings) -> Iterator[Client]:
    """One app per module and backend, for tests that only send what must be refused (each
    checks that it changed nothing, so a refusal that wrongly went through still fails)."""
    with test_client(auth_settings(module_settings)) as c:
        yield c
