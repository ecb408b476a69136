"""Which topics an event belongs to, who may see it, and the message a subscriber receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from projections.base import Recorded

TOPICS = ("account", "instances", "spending", "reservations", "load")
SPENDING_KINDS = frozenset({"Charged", "HoldCaptured", "WindowsReset", "LimitsSet"})
HIDDEN_FIELDS = frozenset({"originator_topic", "timestamp", "at"})
_encoder = msgspec.json.Encoder()


def topics_of(name: str) -> frozenset[str]:
    """The topics of an event type (``CreditAccount.Charged`` -> account and spending)."""
    stream, _, kind = name.partition(".")
    if stream == "CreditAccount":
        return frozenset({"account", "spending"} if kind in SPENDING_KINDS else {"account"})
    if stream == "Payment":
        return frozenset({"account"})
    if stream == "GpuInstance":
        return frozenset({"instances"})
    if stream == "Reservation":
        return frozenset({"reservations"})
    if stream == "ProxyUsage":
        return frozenset({"load"})
    return frozenset()


@dataclass(frozen=True)
class Subscription:
    """What one connection asked for: topics, whose events (None: everyone's), and from where."""

    topics: frozenset[str]
    user_id: str | None
    since: int | None  # resume after this event id; None: from now on


@dataclass
class Prepared:
    """An event ready to render: its owner and any state attached (account, instance, ...)."""

    event: Recorded
    owner: str | None
    topics: frozenset[str]
    extra: dict[str, Any] = field(default_factory=dict)


def visible(prepared: Prepared, sub: Subscription) -> frozenset[str]:
    """The subscribed topics this event is delivered under for ``sub`` (empty: not at all)."""
    wanted = prepared.topics & sub.topics
    if not wanted or (sub.since is not None and prepared.event.position <= sub.since):
        return frozenset()
    if sub.user_id is None:
        return wanted
    if prepared.event.name.startswith("ProxyUsage."):
        data = prepared.event.data
        rows = data.get("rows") or []
        mine = any(r.get("owner") == sub.user_id for r in rows) or any(
            s.get("user_id") == sub.user_id for s in data.get("sessions") or []
        )
        return wanted if mine else frozenset()
    return wanted if prepared.owner == sub.user_id else frozenset()


def render(prepared: Prepared, topics: frozenset[str], user_id: str | None) -> str:
    """The JSON text of one event message for a subscriber (usage rows and usage-session
    tallies cut to their own)."""
    event = prepared.event
    data = {k: v for k, v in event.data.items() if k not in HIDDEN_FIELDS}
    if user_id is not None and event.name.startswith("ProxyUsage."):
        if "rows" in data:
            data["rows"] = [r for r in data["rows"] if r.get("owner") == user_id]
        if "sessions" in data:
            data["sessions"] = [s for s in data["sessions"] if s.get("user_id") == user_id]
    message: dict[str, Any] = {
        "type": "event",
        "id": event.position,
        "topics": sorted(topics),
        "event": event.name,
        "stream_id": str(event.originator_id),
        "version": event.version,
        "user_id": prepared.owner,
        "at": event.data.get("at") or event.data.get("timestamp"),
        "data": data,
    }
    for key, value in prepared.extra.items():
        if key != "spending" or "spending" in topics:
            message[key] = value
    return _encoder.encode(message).decode()


def dumps(message: dict[str, Any]) -> str:
    return _encoder.encode(message).decode()
