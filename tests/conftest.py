"""Shared fixtures: one throwaway PostgreSQL cluster per run, a fresh database per test.

Under CI (``CI=true``) a missing PostgreSQL is a failure, never a silent skip.

Argon2 runs at its cheapest parameters in the test process (``cheap_argon2``): still argon2id
through the same code, but about 1 ms a hash instead of about 0.1 s of two CPUs' time with the
library's recommended parameters; a few thousand hashes in a run made that minutes. Like
``fsync=off`` for the test cluster, it changes the cost, not the behaviour. Servers started as
separate processes keep the real parameters, and so do tests that use ``real_argon2`` (the
login-timing test, whose point is the cost of a hash).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from infrastructure.identity import api_keys, store
from infrastructure.settings import Settings, load_settings
from interfaces.bootstrap import Container, bootstrap
from tests.support.pg import Cluster, running_cluster
from tests.support.redis_server import running_redis

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CHEAP_ARGON2 = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # argon2id, 1 MiB


def _use_hasher(monkeypatch: pytest.MonkeyPatch, hasher: PasswordHasher) -> None:
    monkeypatch.setattr(store, "_hasher", hasher)
    monkeypatch.setattr(api_keys, "_hasher", hasher)
    store._dummy_hash.cache_clear()  # the dummy is made with whichever hasher is in use


@pytest.fixture(scope="session", autouse=True)
def cheap_argon2() -> Iterator[None]:
    """Argon2 at its cheapest in this process for the whole run (see the module's docstring)."""
    with pytest.MonkeyPatch.context() as mp:
        _use_hasher(mp, CHEAP_ARGON2)
        yield
    store._dummy_hash.cache_clear()


@pytest.fixture
def real_argon2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The production hasher (the library's recommended parameters) for one test."""
    _use_hasher(monkeypatch, PasswordHasher())
    yield
    store._dummy_hash.cache_clear()


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


@pytest.fixture(scope="session")
def pg_migrated(pg_cluster: Cluster) -> str:
    """A database that ``bootstrap`` has migrated (every migration, the event store's tables),
    frozen as a template: each test's database is a copy of it, about half the cost of
    migrating an empty one per test. Migrating an empty database stays covered here, by the
    admin CLI's ``migrate`` tests and by the wheel test."""
    name = pg_cluster.create_database("t_migrated_template")
    bootstrap(load_settings(pg_cluster.env(name), env_file=None)).close()
    return pg_cluster.freeze_as_template(name)


@pytest.fixture
def pg_settings(pg_cluster: Cluster, pg_migrated: str) -> Settings:
    name = pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}", template=pg_migrated)
    return load_settings(pg_cluster.env(name), env_file=None)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def module_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Like ``settings``, but one database per module and backend: for the tests of a module
    that leave nothing behind another one could see (refusals of bad input)."""
    if request.param == "postgres":
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        template: str = request.getfixturevalue("pg_migrated")
        name = cluster.create_database(f"m_{uuid.uuid4().hex[:12]}", template=template)
        return load_settings(cluster.env(name), env_file=None)
    settings = load_settings({"DATA_DIR": str(tmp_path_factory.mktemp("data"))}, env_file=None)
    shutil.copyfile(request.getfixturevalue("sqlite_migrated"), settings.db.sqlite_path)
    return settings


@pytest.fixture(scope="session")
def sqlite_migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database file that ``bootstrap`` has migrated, copied into each test's data
    directory (SQLite's counterpart of ``pg_migrated``). Built with ``JWT_SECRET`` set, so no
    secret file is made; closed, so no WAL file is left: the file is all there is to copy."""
    data = tmp_path_factory.mktemp("sqlite_migrated") / "data"
    settings = load_settings({"DATA_DIR": str(data), "JWT_SECRET": "x" * 40}, env_file=None)
    bootstrap(settings).close()
    assert [p.name for p in data.iterdir()] == [settings.db.sqlite_path.name], list(data.iterdir())
    return settings.db.sqlite_path


@pytest.fixture
def sqlite_settings(tmp_path: Path, sqlite_migrated: Path) -> Settings:
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None)
    settings.db.data_dir.mkdir()
    shutil.copyfile(sqlite_migrated, settings.db.sqlite_path)
    return settings


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest) -> Settings:
    """Runs a test once on SQLite and once on PostgreSQL."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_settings")  # type: ignore[no-any-return]
    return request.getfixturevalue("sqlite_settings")  # type: ignore[no-any-return]


@pytest.fixture(params=["sqlite", "postgres"])
def blank_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Like ``settings``, but an empty database nothing has migrated: for tests of what the
    first start or an upgrade does to a store (``settings`` copies a migrated one)."""
    if request.param == "postgres":
        cluster: Cluster = request.getfixturevalue("pg_cluster")
        name = cluster.create_database(f"b_{uuid.uuid4().hex[:12]}")
        return load_settings(cluster.env(name), env_file=None)
    return load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None)


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
