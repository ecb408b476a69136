"""Usage sessions for every door: who a request came from (``caller_of``) and the JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from domain.money import micros_to_usd
from domain.usage import Caller, SessionTally
from infrastructure.auth import Principal
from infrastructure.usage_sessions import UsageSession

CREDENTIAL_KINDS = {"apikey": "apikey", "jwt": "session"}  # Principal.method -> the kind shown


def caller_of(principal: Principal, address: str, user_agent: str = "") -> Caller:
    """The caller of one request: the credential's id (never its secret), address, agent."""
    kind = CREDENTIAL_KINDS.get(principal.method, principal.method)
    return Caller(f"{kind}:{principal.credential_id}", address, user_agent)


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, UTC).isoformat()


def session_json(s: UsageSession) -> dict[str, Any]:
    kind, _, client_id = s.credential.partition(":")
    return {
        "id": s.session_id,
        "user_id": s.user_id,
        "client_id": client_id,
        "credential": kind,
        "ip_address": s.address,
        "user_agent": s.user_agent,
        "started_at": _iso(s.start_at),
        "ended_at": _iso(s.end_at),
        "duration_seconds": round((s.end_at - s.start_at) / 1_000_000, 3),
        "requests": s.requests,
        "credits_spent": {
            "proxy_fees": micros_to_usd(s.proxy_fees),
            "model_predictions": micros_to_usd(s.model_fees),
            "gpu_time": micros_to_usd(s.gpu_fees),
            "total": micros_to_usd(s.credits_spent),
        },
    }


def page_json(rows: list[UsageSession], limit: int) -> dict[str, Any]:
    return {
        "sessions": [session_json(s) for s in rows],
        "next_before": rows[-1].seq if len(rows) == limit else None,
    }


def counted(tally: SessionTally, user_id: str, caller: Caller) -> Caller:
    """A rent or reserve request counts as one request (no fee) of the caller's session, so
    the session its GPU time is attributed to exists (in the next flush, like proxy requests)."""
    tally.count(user_id, caller, 0, "proxy_fees")
    return caller
