"""The model table and upload quota state (``migrations/0007_models.sql``) on SQLite or PG.

Admission and registration take the user's ``model_quota`` row lock (``FOR UPDATE`` on
PostgreSQL; SQLite write transactions are serial), so concurrent uploads, from any number of
replicas, see each other's counts and reservations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from domain.models import (
    DAY,
    HOUR,
    ModelNameTakenError,
    ModelRecord,
    QuotaUsage,
    Signature,
)
from infrastructure.db.sql import Database, Row, Tx

STALE_RESERVATION = timedelta(hours=6)  # a 'receiving' row older than this is a dead upload
COLUMNS = (
    "model_id, owner, name, format, filename, upload_bytes, stored_bytes, storage_key, "
    "backend, sha256, signature, status, created_at"
)


def _micros(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def _record(row: Row) -> ModelRecord:
    return ModelRecord(
        model_id=str(row[0]),
        owner=str(row[1]),
        name=str(row[2]),
        format=str(row[3]),
        filename=str(row[4]),
        upload_bytes=int(row[5]),
        stored_bytes=int(row[6]),
        storage_key=str(row[7]),
        backend=str(row[8]),
        sha256=str(row[9]),
        signature=Signature.from_json(json.loads(row[10])),
        status=str(row[11]),
        created_at=datetime.fromtimestamp(int(row[12]) / 1_000_000, UTC),
    )


def _one(tx: Tx, sql: str, params: tuple[object, ...]) -> Row:
    row = tx.fetchone(sql, params)
    if row is None:  # aggregates always give a row
        raise RuntimeError(f"no row from {sql}")
    return row


class SqlModelCatalog:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ------------------------------------------------------------------ quota

    def _lock(self, tx: Tx, owner: str) -> None:
        tx.execute(
            "INSERT INTO model_quota (user_id, uploads) VALUES (?, 0) "
            "ON CONFLICT (user_id) DO NOTHING",
            (owner,),
        )
        tx.lock_row("SELECT user_id FROM model_quota WHERE user_id = ?", (owner,))

    def _usage(self, tx: Tx, owner: str, now: datetime, skip_upload: str = "") -> QuotaUsage:
        stored = _one(
            tx, "SELECT COALESCE(SUM(stored_bytes), 0) FROM models WHERE owner = ?", (owner,)
        )
        reserved = _one(
            tx,
            "SELECT COALESCE(SUM(bytes), 0) FROM model_uploads WHERE owner = ? "
            "AND state = 'receiving' AND started_at >= ? AND upload_id <> ?",
            (owner, _micros(now - STALE_RESERVATION), skip_upload),
        )
        counts = _one(
            tx,
            "SELECT COALESCE(SUM(CASE WHEN started_at >= ? THEN 1 ELSE 0 END), 0), COUNT(*) "
            "FROM model_uploads WHERE owner = ? AND started_at >= ?",
            (_micros(now - HOUR), owner, _micros(now - DAY)),
        )
        return QuotaUsage(
            bytes_used=int(stored[0]) + int(reserved[0]),
            uploads_last_hour=int(counts[0]),
            uploads_last_day=int(counts[1]),
        )

    def usage(self, owner: str, now: datetime) -> QuotaUsage:
        with self.db.snapshot() as tx:
            return self._usage(tx, owner, now)

    def reserve_upload(
        self,
        owner: str,
        upload_id: str,
        now: datetime,
        admit: Callable[[QuotaUsage], int],
        wanted: int,
    ) -> int:
        with self.db.transaction() as tx:
            self._lock(tx, owner)
            room = admit(self._usage(tx, owner, now))
            reserved = max(0, min(wanted, room))
            tx.execute(  # older than a day: counted by no window, and no live upload
                "DELETE FROM model_uploads WHERE owner = ? AND started_at < ?",
                (owner, _micros(now - DAY)),
            )
            tx.execute(
                "INSERT INTO model_uploads (upload_id, owner, started_at, bytes, state) "
                "VALUES (?, ?, ?, ?, 'receiving')",
                (upload_id, owner, _micros(now), reserved),
            )
            tx.execute("UPDATE model_quota SET uploads = uploads + 1 WHERE user_id = ?", (owner,))
        return reserved

    def cancel_upload(self, upload_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "DELETE FROM model_uploads WHERE upload_id = ? AND state = 'receiving'",
                (upload_id,),
            )

    def register(
        self, record: ModelRecord, upload_id: str, check_room: Callable[[int], None]
    ) -> None:
        with self.db.transaction() as tx:
            self._lock(tx, record.owner)
            if tx.fetchone(
                "SELECT 1 FROM models WHERE owner = ? AND name = ?", (record.owner, record.name)
            ):
                raise ModelNameTakenError(
                    f"you already have a model named {record.name!r}", field="name"
                )
            usage = self._usage(tx, record.owner, record.created_at, skip_upload=upload_id)
            check_room(usage.bytes_used + record.stored_bytes)
            tx.execute(
                f"INSERT INTO models ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.model_id,
                    record.owner,
                    record.name,
                    record.format,
                    record.filename,
                    record.upload_bytes,
                    record.stored_bytes,
                    record.storage_key,
                    record.backend,
                    record.sha256,
                    json.dumps(record.signature.to_json()),
                    record.status,
                    _micros(record.created_at),
                ),
            )
            tx.execute(
                "UPDATE model_uploads SET state = 'done', bytes = ? WHERE upload_id = ?",
                (record.stored_bytes, upload_id),
            )

    # ---------------------------------------------------------------- registry

    def get(self, model_id: str) -> ModelRecord | None:
        with self.db.read() as tx:
            row = tx.fetchone(f"SELECT {COLUMNS} FROM models WHERE model_id = ?", (model_id,))
        return _record(row) if row else None

    def by_name(self, owner: str, name: str) -> ModelRecord | None:
        with self.db.read() as tx:
            row = tx.fetchone(
                f"SELECT {COLUMNS} FROM models WHERE owner = ? AND name = ?", (owner, name)
            )
        return _record(row) if row else None

    def list_for(self, owner: str) -> list[ModelRecord]:
        with self.db.read() as tx:
            rows = tx.fetchall(
                f"SELECT {COLUMNS} FROM models WHERE owner = ? ORDER BY created_at, model_id",
                (owner,),
            )
        return [_record(r) for r in rows]

    def delete(self, owner: str, model_id: str) -> ModelRecord | None:
        with self.db.transaction() as tx:
            row = tx.fetchone(
                f"SELECT {COLUMNS} FROM models WHERE model_id = ? AND owner = ?",
                (model_id, owner),
            )
            if row is None:
                return None
            tx.execute("DELETE FROM models WHERE model_id = ?", (model_id,))
        return _record(row)
