"""Upload quotas and the per-prediction price, on SQLite and on PostgreSQL.

Over a limit the answer is 413 (sizes) or 429 (upload counts) naming what was exceeded, and
nothing is left behind: no staging file, no stored object, no reservation, no count.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.models import QuotaExceededError, UploadLimits
from infrastructure.models.catalog import SqlModelCatalog
from infrastructure.settings import Settings
from interfaces.bootstrap import Container
from tests.conftest import FixedClock
from tests.integration.test_models_support import USD, World, dense_onnx, files_under, make_world

PADDED, _ = dense_onnx(seed=2, pad=1000)  # about 4.1 kB


def _tight(settings: Settings, clock: FixedClock, folder: Path) -> Iterator[World]:
    """2 uploads an hour, 3 a day, 10 kB per file, 6 kB in all."""
    with make_world(
        settings,
        clock,
        db=dataclasses.replace(settings.db, data_dir=folder / "data"),
        models=dataclasses.replace(
            settings.models,
            uploads_per_hour=2,
            uploads_per_day=3,
            max_upload_bytes=10_000,
            storage_quota_bytes=6_000,
        ),
    ) as w:
        yield w


@pytest.fixture
def tight(settings: Settings, clock: FixedClock, tmp_path: Path) -> Iterator[World]:
    """On SQLite and on PostgreSQL."""
    yield from _tight(settings, clock, tmp_path)


@pytest.fixture
def tight_sqlite(sqlite_settings: Settings, clock: FixedClock, tmp_path: Path) -> Iterator[World]:
    yield from _tight(sqlite_settings, clock, tmp_path)


def _quota(w: World, user: str = "alice") -> dict[str, int]:
    body = w.client.get("/api/v1/models", headers=w.h(user)).json()
    quota: dict[str, int] = body["quota"]
    return quota


def _nothing_left(w: World) -> None:
    assert files_under(w.data_dir / "uploads") == []
    with w.c.db.read() as tx:
        receiving = tx.fetchone("SELECT COUNT(*) FROM model_uploads WHERE state = 'receiving'")
    assert receiving is not None
    assert int(receiving[0]) == 0


def test_file_size_limit(tight_sqlite: World) -> None:
    w = tight_sqlite
    before = _quota(w)
    streamed = w.upload("alice", "big.onnx", b"\x08" * 12_000, name="big")
    assert streamed.status_code == 413
    body = streamed.json()
    assert body["quota"] == "file_bytes"
    assert body["limit"] == 10_000
    assert "10000-byte limit" in body["detail"]
    announced = w.upload("alice", "huge.onnx", b"\x08" * 1_200_000, name="huge")
    assert announced.status_code == 413  # refused from Content-Length, before reading
    assert announced.json()["quota"] == "file_bytes"
    assert _quota(w) == before
    _nothing_left(w)
    assert files_under(w.data_dir / "models") == []


def test_storage_quota(tight: World) -> None:
    w = tight
    first = w.upload("alice", "a.onnx", PADDED, name="a")
    assert first.status_code == 201, first.text
    used = first.json()["size_bytes"]
    second = w.upload("alice", "b.onnx", PADDED, name="b")
    assert second.status_code == 413
    body = second.json()
    assert body["quota"] == "storage_bytes"
    assert body["limit"] == 6_000
    assert "storage quota exceeded" in body["detail"]
    assert _quota(w)["storage_bytes_used"] == used
    _nothing_left(w)
    assert len(files_under(w.data_dir / "models")) == 1
    assert w.client.delete("/api/v1/models/a", headers=w.h("alice")).status_code == 200
    assert _quota(w)["storage_bytes_used"] == 0
    third = w.upload("alice", "b.onnx", PADDED, name="b")
    assert third.status_code == 201, third.text
    other = w.upload("bob", "b.onnx", PADDED, name="b")  # quotas are per user
    assert other.status_code == 201, other.text


def test_uploads_per_hour_and_day(tight: World, clock: FixedClock) -> None:
    w = tight
    small, _ = dense_onnx(seed=3)
    assert w.upload("alice", "junk.onnx", b"junk", name="junk").status_code == 400  # not counted
    for n in range(2):
        created = w.upload("alice", "m.onnx", small, name=f"h{n}")
        assert created.status_code == 201, created.text
    hourly = w.upload("alice", "m.onnx", small, name="h2")
    assert hourly.status_code == 429
    assert hourly.json()["quota"] == "uploads_per_hour"
    assert hourly.json()["limit"] == 2
    assert w.upload("bob", "m.onnx", small, name="h2").status_code == 201  # per user
    clock.advance(minutes=61)
    assert w.upload("alice", "m.onnx", small, name="h3").status_code == 201
    daily = w.upload("alice", "m.onnx", small, name="h4")
    assert daily.status_code == 429
    assert daily.json()["quota"] == "uploads_per_day"
    assert _quota(w)["uploads_last_day"] == 3
    clock.advance(hours=24)
    assert w.upload("alice", "m.onnx", small, name="h5").status_code == 201
    _nothing_left(w)


def test_concurrent_admissions_are_exact(container: Container, clock: FixedClock) -> None:
    """Eight uploads admitted at once against a limit of two: exactly two get in."""
    catalog = SqlModelCatalog(container.db)
    limits = UploadLimits(total_bytes=10**9, file_bytes=10**6, per_hour=2, per_day=100)
    owner = f"racer-{uuid.uuid4().hex[:6]}"
    admitted, refused = [], []
    barrier = threading.Barrier(8)

    def admit() -> None:
        barrier.wait()
        try:
            catalog.reserve_upload(owner, str(uuid.uuid4()), clock(), limits.admit, 1000)
            admitted.append(1)
        except QuotaExceededError:
            refused.append(1)

    threads = [threading.Thread(target=admit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(admitted), len(refused)) == (2, 6)
    usage = catalog.usage(owner, clock())
    assert usage.uploads_last_hour == 2
    assert usage.bytes_used == 2000  # reservations count until the upload ends


def test_prediction_price_is_paid_from_a_lease(
    sqlite_settings: Settings, clock: FixedClock
) -> None:
    with make_world(
        sqlite_settings,
        clock,
        models=dataclasses.replace(
            sqlite_settings.models, predict_price=10_000, lease_amount=50_000
        ),
    ) as w:
        content, _ = dense_onnx()
        created = w.upload("alice", "p.onnx", content, name="p")
        assert created.status_code == 201, created.text
        bob = w.upload("bob", "p.onnx", content, name="p")
        assert bob.status_code == 201
        for _ in range(7):
            assert w.predict("alice", "p", {"input": [1, 2, 3, 4]}).status_code == 200
        broke = w.predict("bob", "p", {"input": [1, 2, 3, 4]})
        assert broke.status_code == 402  # no credits: no lease
        bad = w.predict("bob", "p", {"input": [1, 2]})
        assert bad.status_code == 400  # a bad input is refused before paying
        service = w.c.model_service()
        w.client.blocking_portal.call(service.leases.settle)
        account = w.c.ledger.account(w.ids["alice"])
        assert account.total_charged == 7 * 10_000
        assert account.balance == 100 * USD - 7 * 10_000
