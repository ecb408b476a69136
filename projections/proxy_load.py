"""The load table: requests, errors and latency per instance, from flushed usage events."""

from __future__ import annotations

from collections.abc import Iterable

from projections.base import Op, Recorded, Upsert


class ProxyLoadProjection:
    name = "proxy_load"
    tables = ("proxy_load",)
    events = ("ProxyUsage.Recorded",)

    def fold(self, event: Recorded) -> Iterable[Op]:
        if event.name != "ProxyUsage.Recorded":
            return []
        return [
            Upsert(
                "proxy_load",
                {"instance_id": str(row["instance_id"])},
                put={
                    "owner": str(row["owner"]),
                    "provider": str(row["provider"]),
                    "last_at": event.at_micros,
                },
                add={
                    "requests": int(row["requests"]),
                    "errors": int(row["errors"]),
                    "latency_ms_sum": int(row["latency_ms_sum"]),
                },
            )
            for row in event.data["rows"]
        ]
