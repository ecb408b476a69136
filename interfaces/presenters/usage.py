"""Usage sessions (``GET /api/v1/usage/sessions``, the CLI and the dashboard)."""

from __future__ import annotations

from datetime import UTC, datetime

from msgspec import Struct

from domain.money import micros_to_usd
from infrastructure.readmodels.queries.usage_sessions import UsageSession


class SessionCredits(Struct):
    proxy_fees: str
    model_predictions: str
    gpu_time: str
    total: str


class Session(Struct):
    """Requests from one credential, address and client, with no idle gap in between."""

    id: str
    user_id: str
    client_id: str
    credential: str
    ip_address: str
    user_agent: str
    started_at: str
    ended_at: str
    duration_seconds: float
    requests: int
    credits_spent: SessionCredits


class SessionPage(Struct):
    """Newest first; ``next_before`` is the ``before`` cursor of the next page."""

    sessions: list[Session]
    next_before: int | None


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, UTC).isoformat()


def present_session(s: UsageSession) -> Session:
    kind, _, client_id = s.credential.partition(":")
    return Session(
        id=s.session_id,
        user_id=s.user_id,
        client_id=client_id,
        credential=kind,
        ip_address=s.address,
        user_agent=s.user_agent,
        started_at=_iso(s.start_at),
        ended_at=_iso(s.end_at),
        duration_seconds=round((s.end_at - s.start_at) / 1_000_000, 3),
        requests=s.requests,
        credits_spent=SessionCredits(
            proxy_fees=micros_to_usd(s.proxy_fees),
            model_predictions=micros_to_usd(s.model_fees),
            gpu_time=micros_to_usd(s.gpu_fees),
            total=micros_to_usd(s.credits_spent),
        ),
    )


def present_page(rows: list[UsageSession], limit: int) -> SessionPage:
    return SessionPage(
        sessions=[present_session(s) for s in rows],
        next_before=rows[-1].seq if len(rows) == limit else None,
    )
