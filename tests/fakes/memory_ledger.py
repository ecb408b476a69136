"""An in-memory event store for the ledger, with the idempotency key table (tests only).

``LedgerApp`` refuses a recorder that does not record idempotency keys (docs/adr/0016), so the
library's plain POPO recorder cannot carry it. ``MemoryLedgerRecorder`` adds the key table the
way the SQL recorders do: a save whose key rows name an ``(account_id, key)`` already recorded
fails whole with ``IntegrityError`` (nothing of it is stored), and ``idempotency_fingerprints``
answers from the table. The 72-hour prune of the SQL tables is not modelled: rows stay, which
is what a table looks like between two prunes.

Use: ``LedgerApp(env=memory_env())``, or ``memory_ledger(policy=…, clock=…)`` for a service.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, IntegrityError, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder, POPOFactory

from domain.clocks import system_clock
from domain.guardrails import GuardrailPolicy
from domain.ports.clock import Clock
from domain.services.ledger import LedgerApp, LedgerService

Pair = tuple[UUID, str]
KeyRow = tuple[UUID, str, str, int]  # account_id, key, fingerprint, minute


class MemoryLedgerRecorder(POPOApplicationRecorder):
    """POPO application recorder that also keeps the ledger's idempotency key table."""

    records_idempotency_keys = True

    def __init__(self) -> None:
        super().__init__()
        self._keys: dict[Pair, tuple[str, int]] = {}

    def _assert_uniqueness(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> None:
        super()._assert_uniqueness(stored_events, **kwargs)
        rows: Sequence[KeyRow] = kwargs.get("idempotency_keys") or ()
        pairs = [(account, key) for account, key, _, _ in rows]
        if len(set(pairs)) < len(pairs) or any(pair in self._keys for pair in pairs):
            raise IntegrityError(f"idempotency key already recorded: {pairs}")

    def _update_table(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._update_table(stored_events, **kwargs)
        for account, key, fingerprint, minute in kwargs.get("idempotency_keys") or ():
            self._keys[(account, key)] = (fingerprint, minute)
        return ids

    def idempotency_fingerprints(self, pairs: Sequence[Pair]) -> dict[Pair, str]:
        with self._database_lock:
            return {pair: self._keys[pair][0] for pair in pairs if pair in self._keys}

    def key_rows(self) -> int:
        """How many rows the key table holds."""
        with self._database_lock:
            return len(self._keys)


class Factory(POPOFactory):
    """POPO stores with the ledger's recorder (``PERSISTENCE_MODULE=…memory_ledger:Factory``)."""

    def application_recorder(self) -> ApplicationRecorder:
        return MemoryLedgerRecorder()


def memory_env() -> dict[str, str]:
    """The ``eventsourcing`` environment of an in-memory ledger."""
    return {"PERSISTENCE_MODULE": f"{__name__}:Factory"}


def memory_ledger(
    *, policy: GuardrailPolicy | None = None, clock: Clock = system_clock
) -> LedgerService:
    """A ``LedgerService`` on a fresh in-memory event store (close it when done)."""
    return LedgerService(
        LedgerApp(env=memory_env()), policy=policy or GuardrailPolicy(), clock=clock
    )
