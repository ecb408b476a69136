"""Generates a realistic ledger log of millions of events and COPYs it into PostgreSQL.

Every event is made by the real aggregates (``CreditAccount``, ``GpuInstance``, ``Payment``,
``ProxyUsage``) in memory and serialised by the application's own mapper, so the stored rows
are byte-for-byte what the service would store; they are streamed with ``COPY … (FORMAT
BINARY)`` instead of one save per command. The accounts' snapshots (every
``SNAPSHOT_INTERVAL`` versions, as ``LedgerApp`` takes them) and the idempotency key rows of
the last 72 h (what the key table holds once pruned) are written the same way.

The log is interleaved in business time like a real one: a heap orders the accounts by their
next event's time. Shape: a few "whale" accounts carry a fixed number of events each, one
"reference" account a small fixed number, the rest share what is left (a long tail). The
events' library timestamps are their business times (the generator's clock), so everything
that reads either time sees a consistent log.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent

from domain.credits import CreditAccount, account_id_for, recorded_key
from domain.payments import payment_id_for
from domain.services.ledger import SNAPSHOT_INTERVAL, LedgerApp
from tests.bench.scale_templates import Templates

KEY_SPAN = timedelta(hours=72)  # key rows younger than this stay in the pruned key table
START = datetime(2026, 1, 1, tzinfo=UTC)
COPY_EVENTS = (
    "COPY ledger_events (originator_id, originator_version, topic, state)"
    " FROM STDIN (FORMAT BINARY)"
)
COPY_SNAPSHOTS = (
    "COPY ledger_snapshots (originator_id, originator_version, topic, state)"
    " FROM STDIN (FORMAT BINARY)"
)
COPY_KEYS = (
    "COPY ledger_idempotency (account_id, key, fingerprint, minute) FROM STDIN (FORMAT BINARY)"
)
ROW_TYPES = ["uuid", "int8", "text", "bytea"]
KEY_TYPES = ["uuid", "text", "text", "int8"]


@dataclass(frozen=True)
class Shape:
    """How many events, over how many accounts, and how they are spread."""

    events: int = 10_000_000
    accounts: int = 100_000
    whales: int = 3
    whale_events: int = 1_000_000
    reference_events: int = 1_000
    days: int = 180
    seed: int = 24

    @staticmethod
    def scaled(events: int) -> Shape:
        """The 10 M shape scaled to ``events`` (whales keep a tenth of the log each at most)."""
        if events >= 10_000_000:
            return Shape(events=events)
        accounts = max(20, events // 100)
        whale = min(1_000_000, max(2_000, events // 10))
        return Shape(events=events, accounts=accounts, whale_events=whale)


def whale_user(index: int) -> str:
    return f"whale-{index}"


REFERENCE_USER = "reference-0"


def tail_user(index: int) -> str:
    return f"user-{index:06d}"


@dataclass(slots=True)
class _Actor:
    """One account's program: what is open, its version, and when it acts next."""

    user: str
    target: int  # account events to reach
    step: float  # mean seconds between its commands
    oid: UUID
    version: int = 0
    available: int = 0
    hold: str = ""
    hold_left: int = 0
    hold_expires: datetime = START
    instance: UUID | None = None
    instance_version: int = 0
    billed: int = 0
    n: int = 0


@dataclass
class Counts:
    events: int = 0
    account_events: int = 0
    snapshots: int = 0
    keys: int = 0
    keyed_events: int = 0
    by_name: dict[str, int] = field(default_factory=dict)


Row = tuple[UUID, int, str, bytes]
KEYED = {"Granted", "Charged", "HoldPlaced", "HoldCaptured", "HoldReleased", "Debited"}


class Generator:
    """Drives the actors in business-time order; each event is a rendered template."""

    def __init__(self, shape: Shape, templates: Templates, sink: Callable[[Row], None]) -> None:
        self.shape = shape
        self.t = templates.by_kind
        self.sink = sink
        self.rng = random.Random(shape.seed)
        self.end = START + timedelta(days=shape.days)
        self.counts = Counts()
        self.usage_due = START
        # one proxy usage flush per interval: about 3 % of the log
        self.usage_every = (self.end - START) / max(1, int(shape.events * 0.03))
        self.key_since = self.end - KEY_SPAN
        self.keys: list[tuple[UUID, str, str, int]] = []

    def actors(self) -> list[tuple[float, int, _Actor]]:
        s = self.shape
        span = self.end - START
        plan: list[tuple[str, int]] = [(whale_user(i), s.whale_events) for i in range(s.whales)]
        plan.append((REFERENCE_USER, s.reference_events))
        # instances, payments and usage add about 0.45 events per account event
        left = int(s.events / 1.45) - sum(n for _, n in plan)
        tail = max(1, s.accounts - len(plan))
        weights = [1.0 / (1 + i) ** 0.6 for i in range(tail)]  # a long tail
        scale = max(left, tail * 4) / sum(weights)
        plan += [(tail_user(i), max(4, int(w * scale))) for i, w in enumerate(weights)]
        out = []
        base, total = START.timestamp(), span.total_seconds()
        for seq, (user, target) in enumerate(plan):
            opened = self.rng.uniform(0, total * 0.05)
            step = (total - opened) / max(1, target)
            out.append((base + opened, seq, _Actor(user, target, step, account_id_for(user))))
        return out

    def run(self, progress: Callable[[int], None] | None = None) -> Counts:
        heap = self.actors()
        heapq.heapify(heap)
        rng, counts = self.rng, self.counts
        usage_due = self.usage_due.timestamp()
        reported = 0
        while heap:
            when, seq, actor = heap[0]
            at = when
            now = datetime.fromtimestamp(when, UTC)
            self._act(actor, now)
            if actor.version >= actor.target:
                heapq.heappop(heap)
            else:
                when += max(0.001, actor.step * rng.uniform(0.5, 1.5))
                heapq.heapreplace(heap, (when, seq, actor))
            if at >= usage_due:
                self._usage(now)
                usage_due = at + self.usage_every.total_seconds()
            if progress is not None and counts.events - reported >= 10_000:
                progress(counts.events - reported)
                reported = counts.events
        if progress is not None:
            progress(counts.events - reported)
        return counts

    # ------------------------------------------------------------------ events

    def _put(self, oid: UUID, version: int, kind: str, **values: Any) -> None:
        template = self.t[kind]
        self.sink((oid, version, template.topic, template.render(**values)))
        self.counts.events += 1
        self.counts.by_name[kind] = self.counts.by_name.get(kind, 0) + 1

    def _account(self, a: _Actor, kind: str, now: datetime, **values: Any) -> None:
        a.version += 1
        at = now.isoformat()
        self._put(a.oid, a.version, kind, at=at, **values)
        self.counts.account_events += 1
        if kind in KEYED:
            self.counts.keyed_events += 1
            if now >= self.key_since:
                data = {**values, "at": at, "hold_id": values.get("hold", "")}
                data.update(source="payment", kind="adjustment", reference=values.get("ref", ""))
                data["expires_at"] = values.get("exp", "")
                found = recorded_key(kind, data)
                if found is not None:
                    self.keys.append((a.oid, *found))

    def _instance(self, a: _Actor, kind: str, now: datetime, **values: Any) -> None:
        assert a.instance is not None
        a.instance_version += 1
        self._put(a.instance, a.instance_version, kind, at=now.isoformat(), **values)

    def _act(self, a: _Actor, now: datetime) -> None:
        rng = self.rng
        a.n += 1
        if a.version == 0:
            self._account(a, "Opened", now, user=a.user)
            self._pay(a, now, 50_000_000 + rng.randrange(5) * 10_000_000)
            return
        roll = rng.random()
        if a.hold and a.hold_expires <= now:
            self._instance(a, "StopRequested", now)
            self._instance(a, "Terminated", now)
            self._account(a, "HoldExpired", now, hold=a.hold, amount=a.hold_left)
            a.available += a.hold_left
            a.hold, a.hold_left, a.instance = "", 0, None
        elif a.available < 20_000_000:
            self._pay(a, now, 100_000_000)
        elif a.instance:
            self._instance_step(a, now, roll)
        elif roll < 0.70:  # a proxied request's fee
            amount = 100 + rng.randrange(4_900)
            self._charge(a, now, amount, "px", "proxy request", f"req-{a.user}-{a.n}", "proxy")
        elif roll < 0.745:
            self._rent(a, now)
        elif roll < 0.775:
            amount = 1_000 + rng.randrange(9_000)
            self._account(a, "Debited", now, amount=amount, key=f"db-{a.n}")
            a.available -= amount
        else:  # a model run's fee
            amount = 500 + rng.randrange(20_000)
            self._charge(a, now, amount, "md", "model inference", f"model-{a.n % 7}", "models")

    def _charge(
        self, a: _Actor, now: datetime, amount: int, prefix: str, reason: str, ref: str, actor: str
    ) -> None:
        key = f"{prefix}-{a.n}"
        self._account(
            a, "Charged", now, amount=amount, key=key, reason=reason, ref=ref, actor=actor
        )
        a.available -= amount

    def _pay(self, a: _Actor, now: datetime, amount: int) -> None:
        key = f"pay-{a.n}"
        pid = payment_id_for(a.user, key)
        at = now.isoformat()
        ext = f"pi_{a.user}_{a.n}"
        self._put(pid, 1, "Initiated", at=at, user=a.user, key=key, amount=amount, fp=f"fp-{a.n}")
        self._put(pid, 2, "Pending", at=at, ext=ext)
        self._put(pid, 3, "Succeeded", at=at, ext=ext, amount=amount)
        self._account(a, "Granted", now, amount=amount, key=key, ref=str(pid))
        a.available += amount

    def _rent(self, a: _Actor, now: datetime) -> None:
        iid = UUID(int=self.rng.getrandbits(128), version=4)
        price = 1_200_000 + self.rng.randrange(8) * 300_000
        a.hold, a.hold_left = f"inst-{iid}", price * 4
        a.hold_expires = now + max(timedelta(days=7), timedelta(seconds=a.step * 40))
        self._account(
            a,
            "HoldPlaced",
            now,
            hold=a.hold,
            amount=a.hold_left,
            exp=a.hold_expires.isoformat(),
            key=f"hold-{a.n}",
            ref=str(iid),
        )
        a.available -= a.hold_left
        a.instance, a.instance_version, a.billed = iid, 0, 0
        self._instance(
            a,
            "Requested",
            now,
            iid=iid.hex,
            user=a.user,
            price=price,
            pprice=price * 8 // 10,
            hold=a.hold,
        )
        self._instance(a, "Provisioning", now, pid=f"vast-{a.n}")

    def _instance_step(self, a: _Actor, now: datetime, roll: float) -> None:
        if a.instance_version == 2:
            self._instance(a, "Running", now, port=20_000 + a.n % 1_000)
        elif roll < 0.9 and a.hold_left > 200_000:
            amount = 100_000 + self.rng.randrange(100_000)
            self._account(a, "HoldCaptured", now, hold=a.hold, amount=amount, key=f"cap-{a.n}")
            a.hold_left -= amount
            a.billed += amount
            self._instance(a, "Metered", now, amount=a.billed, hold=a.hold)
        else:
            self._account(a, "HoldReleased", now, hold=a.hold, amount=a.hold_left, key=f"rel-{a.n}")
            a.available += a.hold_left
            self._instance(a, "StopRequested", now)
            self._instance(a, "Terminated", now)
            a.hold, a.hold_left, a.instance = "", 0, None

    def _usage(self, now: datetime) -> None:
        """One proxy process's usage flush (a new ``ProxyUsage``)."""
        oid = UUID(int=self.rng.getrandbits(128), version=4)
        self._put(oid, 1, "Recorded", at=now.isoformat())


class CopySink:
    """Streams rows into ``ledger_events`` with binary COPY, one transaction per batch."""

    def __init__(self, conn: psycopg.Connection[Any], batch: int = 50_000) -> None:
        self.conn = conn
        self.batch = batch
        self.rows: list[Row] = []

    def __call__(self, row: Row) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            copy_rows(self.conn, COPY_EVENTS, ROW_TYPES, self.rows)
            self.rows = []


def copy_rows(conn: psycopg.Connection[Any], sql: str, types: list[str], rows: Any) -> None:
    with conn.cursor() as cur, cur.copy(sql) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
    conn.commit()


def take_snapshots(
    app: LedgerApp, conn: psycopg.Connection[Any], account_id: UUID, page: int = 20_000
) -> int:
    """Replay one account from the event store and store a snapshot every
    ``SNAPSHOT_INTERVAL`` versions, as ``LedgerApp`` takes them after its saves."""
    mapper = app.mapper
    aggregate: Any = None
    version, written = 0, 0
    snapshot_class = getattr(CreditAccount, "Snapshot", Snapshot)
    while True:
        rows = conn.execute(
            "SELECT originator_version, topic, state FROM ledger_events"
            " WHERE originator_id = %s AND originator_version > %s"
            " ORDER BY originator_version LIMIT %s",
            (account_id, version, page),
        ).fetchall()
        if not rows:
            break
        snaps = []
        for v, topic, state in rows:
            stored = StoredEvent(account_id, v, topic, bytes(state))
            domain_event: Any = mapper.to_domain_event(stored)
            aggregate = domain_event.mutate(aggregate)
            if v % SNAPSHOT_INTERVAL == 0:
                s = mapper.to_stored_event(snapshot_class.take(aggregate))
                snaps.append((s.originator_id, s.originator_version, s.topic, s.state))
        version = rows[-1][0]
        copy_rows(conn, COPY_SNAPSHOTS, ROW_TYPES, snaps)
        written += len(snaps)
    return written


def generate(
    app: LedgerApp,
    dsn: str,
    shape: Shape,
    progress: Callable[[int], None] | None = None,
    snapshot_users: tuple[str, ...] | None = None,
) -> Counts:
    """Write ``shape``'s log into the (empty) event store tables of ``app``'s database.

    The event table's indexes are dropped for the load and built again after it (what a bulk
    restore does); the result is the table the library creates. Snapshots are then taken for
    ``snapshot_users`` by replaying them (default: the first whale and the reference account,
    the two the benchmark loads through the aggregate; replaying every whale costs minutes).
    """
    templates = Templates(app.mapper)
    templates.check()
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE ledger_events DROP CONSTRAINT ledger_events_pkey")
        conn.execute("DROP INDEX ledger_events_notification_id_idx")
        conn.commit()
        sink = CopySink(conn)
        generator = Generator(shape, templates, sink)
        counts = generator.run(progress)
        sink.flush()
        copy_rows(conn, COPY_KEYS, KEY_TYPES, dict.fromkeys(generator.keys))
        counts.keys = len(set(generator.keys))
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            "ALTER TABLE ledger_events ADD PRIMARY KEY (originator_id, originator_version)"
        )
        conn.execute(
            "CREATE UNIQUE INDEX ledger_events_notification_id_idx"
            " ON ledger_events (notification_id ASC)"
        )
        conn.commit()
        users = (whale_user(0), REFERENCE_USER) if snapshot_users is None else snapshot_users
        for user in users:
            counts.snapshots += take_snapshots(app, conn, account_id_for(user))
    with psycopg.connect(dsn, autocommit=True) as conn2:
        for table in ("ledger_events", "ledger_snapshots", "ledger_idempotency"):
            conn2.execute(f"VACUUM ANALYZE {table}")
    return counts


def account_user(kind: str) -> str:
    """The user of the benchmark's named accounts: ``whale`` or ``reference``."""
    return whale_user(0) if kind == "whale" else REFERENCE_USER


__all__ = ["Counts", "Generator", "Shape", "account_id_for", "account_user", "generate"]
