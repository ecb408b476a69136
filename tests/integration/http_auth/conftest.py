"""The auth matrix's client: the real app (Litestar's test client) on SQLite and PostgreSQL."""

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
