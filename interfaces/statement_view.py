"""A monthly statement as the API and the admin CLI show it (USD decimals)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec

from domain.credits import CreditAccount, account_id_for
from domain.errors import DomainError
from domain.statement_chain import MonthChainBuilder, StoredRecord, month_chain
from domain.statements import Statement, hold_placed, month_bounds, statement
from infrastructure.eventstore.statement_hashes import StatementHashes, iter_records
from interfaces.presenters.statements import present_statement

if TYPE_CHECKING:
    from interfaces.bootstrap import Container


def build_statement(c: Container, user_id: str, month: str) -> Statement:
    """The month's statement with its hash chain (docs/events.md). Once the month has ended
    its chain is recorded (first build wins) for ``verify-statements`` to check later.

    Reads the month, not the account's whole stream (docs/adr/0033): the opening balance is
    the account at the month's start (a stream search and a snapshot), and the chain starts
    from the newest month recorded before this one (else from the first event), streamed.
    """
    start, end = month_bounds(month)
    hashes = StatementHashes(c.db)
    account_id = account_id_for(user_id)
    try:
        opening_version = c.ledger.version_at(user_id, start, strict=True)
    except DomainError:  # no account: an empty statement on the genesis hash
        result = statement(month, [])
        chain = month_chain(month, [])
    else:
        balance, placed = _opening(c, account_id, opening_version)
        builder, chain_from = _chain_start(c, hashes, user_id, month)
        records = iter_records(c.app, account_id, after=min(chain_from, opening_version))

        def month_events() -> Iterator[_RecordEvent]:
            for record in records:
                if record.version > chain_from and not builder.add(record):
                    return
                if record.version > opening_version:
                    yield _RecordEvent(record)

        result = statement(month, month_events(), balance=balance, placed=placed)
        chain = builder.result()
    result.opening_hash, result.closing_hash = chain.opening_hash, chain.closing_hash
    now = c.ledger.clock()
    if end <= now:
        hashes.record(user_id, chain, now)
    return result


def _opening(c: Container, account_id: UUID, version: int) -> tuple[int, dict[str, Any]]:
    """The balance after ``version`` and what the holds open then were placed for."""
    if version == 0:
        return 0, {}
    account: CreditAccount = c.app.repository.get(account_id, version=version)
    wanted = set(account.holds)
    placed: dict[str, Any] = {}
    if wanted:  # their HoldPlaced events: a hold lives hours, so a short walk back
        for record in iter_records(c.app, account_id, upto=version, desc=True):
            hold_id = record.state.get("hold_id")
            if hold_id in wanted and record.topic.endswith(".HoldPlaced"):
                placed[hold_id] = hold_placed(record.state)
                wanted.discard(hold_id)
                if not wanted:
                    break
    return account.balance, placed


def _chain_start(
    c: Container, hashes: StatementHashes, user_id: str, month: str
) -> tuple[MonthChainBuilder, int]:
    """The chain builder for ``month`` and the version its start hash follows: the closing
    hash of the newest month recorded before (its last event found by a stream search),
    else the genesis hash before version 1."""
    found = hashes.latest_before(user_id, month)
    if found is None:
        return MonthChainBuilder(month), 0
    recorded_month, closing_hash = found
    version = c.ledger.version_at(user_id, month_bounds(recorded_month)[1], strict=True)
    return MonthChainBuilder(month, closing_hash), version


class _RecordEvent:
    """A stored record as the statement fold reads an event (name, business time, fields)."""

    __slots__ = ("at", "data", "name")

    def __init__(self, record: StoredRecord) -> None:
        self.name = record.topic.rpartition(".")[2]
        self.at = record.at
        self.data = dict(record.state)


def statement_json(user_id: str, month: str, history: list[Any]) -> dict[str, Any]:
    return statement_dict(user_id, statement(month, history))


def statement_dict(user_id: str, result: Statement) -> dict[str, Any]:
    """The statement as plain data (the admin CLI): the same as ``present_statement``."""
    data: dict[str, Any] = msgspec.to_builtins(present_statement(user_id, result))
    return data
