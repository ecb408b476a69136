"""A monthly statement as the API and the admin CLI show it (USD decimals)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from domain.errors import DomainError
from domain.statement_chain import month_chain
from domain.statements import Statement, month_bounds, statement
from infrastructure.statement_hashes import StatementHashes, stored_records
from interfaces.presenters.statements import present_statement

if TYPE_CHECKING:
    from interfaces.bootstrap import Container


def build_statement(c: Container, user_id: str, month: str) -> Statement:
    """The month's statement with its hash chain (docs/events.md). Once the month has ended
    its chain is recorded (first build wins) for ``verify-statements`` to check later."""
    try:
        history = c.ledger.history(user_id)
    except DomainError:
        history = []
    result = statement(month, history)
    chain = month_chain(month, stored_records(c.app, user_id))
    result.opening_hash, result.closing_hash = chain.opening_hash, chain.closing_hash
    now = c.ledger.clock()
    if month_bounds(month)[1] <= now:
        StatementHashes(c.db).record(user_id, chain, now)
    return result


def statement_json(user_id: str, month: str, history: list[Any]) -> dict[str, Any]:
    return statement_dict(user_id, statement(month, history))


def statement_dict(user_id: str, result: Statement) -> dict[str, Any]:
    """The statement as plain data (the admin CLI): the same as ``present_statement``."""
    data: dict[str, Any] = msgspec.to_builtins(present_statement(user_id, result))
    return data
