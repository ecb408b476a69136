"""Shared fixtures: one throwaway PostgreSQL cluster per run, a fresh database per test.

Under CI (``CI=true``) a missing PostgreSQL is a failure, never a silent skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infrastructure.settings import Settings, load_settings
from interfaces.bootstrap import Container, bootstrap
from tests.support.pg import Cluster, running_cluster
from tests.support.redis_server import running_redis

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    try:
        with running_cluster() as cluster:
            yield cluster
    except (FileNotFoundError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI: {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A throwaway Redis server for the whole run."""
    try:
        with running_redis() as url:
            yield url
    except (FileNotFoundError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"Redis is required under CI: {exc}")
        pytest.skip(f"Redis not available: {exc}")


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def pg_settings(pg_cluster: Cluster) -> Settings:
    name = pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
    return load_settings(pg_cluster.env(name), env_file=None)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Runs a test once on SQLite and once on PostgreSQL."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_settings")  # type: ignore[no-any-return]
    return request.getfixturevalue("sqlite_settings")  # type: ignore[no-any-return]


class FixedClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def container(settings: Settings, clock: FixedClock) -> Iterator[Container]:
    c = bootstrap(settings, clock=clock)
    try:
        yield c
    finally:
        c.close()
