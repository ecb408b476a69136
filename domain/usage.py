"""ProxyUsage: one flush of a serving process's request counters, recorded for reports.

The proxy never writes an event per request; each process counts requests, errors and
latency per instance in memory and records them here every few seconds, one aggregate per
flush (so flushes from many processes never contend).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event


class ProxyUsage(Aggregate):
    @event("Recorded")
    def __init__(self, process_id: str, rows: list[dict[str, Any]], at: datetime) -> None:
        """``rows``: {instance_id, owner, provider, requests, errors, latency_ms_sum} each."""
        self.process_id = process_id
        self.rows = rows
        self.at = at
