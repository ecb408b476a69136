"""The live event feed (/ws) shows a usage flush's session tallies to their own user only."""

from __future__ import annotations

import json
import uuid
from typing import Any

from interfaces.ws.topics import Prepared, Subscription, render, topics_of, visible
from projections.base import Recorded


def _tally(user_id: str, address: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "credential": f"apikey:{user_id}-key",
        "address": address,
        "user_agent": "ua",
        "first_at": 1,
        "last_at": 2,
        "requests": 1,
        "proxy_fees": 0,
        "model_fees": 0,
    }


def _flush(rows: list[dict[str, Any]], sessions: list[dict[str, Any]]) -> Prepared:
    name = "ProxyUsage.Recorded"
    data = {"process_id": "p", "rows": rows, "at": "2026-11-01T12:00:00+00:00"}
    event = Recorded(1, uuid.uuid4(), 1, name, {**data, "sessions": sessions})
    return Prepared(event, None, topics_of(name))


def _sub(user_id: str | None) -> Subscription:
    return Subscription(frozenset({"load"}), user_id, None)


def test_each_user_sees_only_their_own_session_tallies() -> None:
    row = {"instance_id": "i", "owner": "ann", "provider": "sandbox", "requests": 1}
    prepared = _flush([row], [_tally("ann", "10.0.0.1"), _tally("bob", "192.0.2.9")])
    ann = json.loads(render(prepared, frozenset({"load"}), "ann"))
    assert [s["address"] for s in ann["data"]["sessions"]] == ["10.0.0.1"]
    bob = json.loads(render(prepared, frozenset({"load"}), "bob"))
    assert bob["data"]["sessions"] == [_tally("bob", "192.0.2.9")]
    assert bob["data"]["rows"] == []
    admin = json.loads(render(prepared, frozenset({"load"}), None))
    assert len(admin["data"]["sessions"]) == 2


def test_a_flush_with_only_your_predictions_reaches_you() -> None:
    prepared = _flush([], [_tally("bob", "192.0.2.9")])
    assert visible(prepared, _sub("bob")) == {"load"}
    assert visible(prepared, _sub("ann")) == frozenset()
