"""Usage sessions for every door, as JSON (who a request came from: ``Principal.caller``)."""

from __future__ import annotations

from typing import Any

import msgspec

from domain.usage import Caller, SessionTally
from infrastructure.readmodels.queries.usage_sessions import UsageSession
from interfaces.presenters.usage import present_page, present_session


def session_json(s: UsageSession) -> dict[str, Any]:
    """The session as plain data (CLI, dashboard): the same as ``present_session``."""
    data: dict[str, Any] = msgspec.to_builtins(present_session(s))
    return data


def page_json(rows: list[UsageSession], limit: int) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(present_page(rows, limit))
    return data


def counted(tally: SessionTally, user_id: str, caller: Caller) -> Caller:
    """A rent or reserve request counts as one request (no fee) of the caller's session, so
    the session its GPU time is attributed to exists (in the next flush, like proxy requests)."""
    tally.count(user_id, caller, 0, "proxy_fees")
    return caller
