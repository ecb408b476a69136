"""Usage sessions: per user, credential and client address, requests and credits spent.

Folded from the ``sessions`` rows of ``ProxyUsage.Recorded`` (the proxy's and the model
service's periodic flushes; no write per request). A session is extended by a row whose
requests come within the event's ``idle_minutes`` of it, else a new one opens: decided from
event times in log order (``Span``), so a rebuild gives the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable

from projections.base import Op, Recorded, Span, Upsert

DEFAULT_IDLE_MINUTES = 30  # for a row recorded without ``idle_minutes``


class UsageSessionsProjection:
    name = "usage_sessions"
    tables = ("usage_sessions",)
    events = ("ProxyUsage.Recorded",)

    def fold(self, event: Recorded) -> Iterable[Op]:
        if event.name != "ProxyUsage.Recorded":
            return []
        idle = int(event.data.get("idle_minutes") or DEFAULT_IDLE_MINUTES)
        return [
            Span(
                "usage_sessions",
                group={
                    "user_id": str(row["user_id"]),
                    "credential": str(row["credential"]),
                    "address": str(row["address"]),
                },
                ident={"session_id": f"{event.position}-{index}"},
                seq=event.position * 100_000 + index,
                first=int(row["first_at"]),
                last=int(row["last_at"]),
                gap=idle * 60_000_000,
                put={"user_agent": str(row["user_agent"])},
                add={
                    "requests": int(row["requests"]),
                    "proxy_fees": int(row["proxy_fees"]),
                    "model_fees": int(row["model_fees"]),
                },
            )
            for index, row in enumerate(event.data.get("sessions") or ())
        ]


class UsageRentalsProjection:
    """GPU rentals with who rented them and the GPU time billed, for usage sessions.

    ``GpuInstance.Requested`` gives the renter's credential and address (``""`` for rentals
    recorded before they were kept), ``GpuInstance.Metered`` the total billed so far (hold
    captures and any charge beyond the hold, per instance even under a reservation's shared
    hold). The sessions query joins them to sessions at read time
    (infrastructure/readmodels/queries/usage_sessions.py).
    """

    name = "usage_rentals"
    tables = ("usage_rentals",)
    events = ("GpuInstance.Requested", "GpuInstance.Metered")

    def fold(self, event: Recorded) -> Iterable[Op]:
        data = event.data
        key = {"instance_id": str(event.originator_id)}
        if event.name == "GpuInstance.Requested":
            put: dict[str, object] = {
                "user_id": str(data["owner"]),
                "credential": str(data.get("credential") or ""),
                "address": str(data.get("address") or ""),
                "rented_at": event.at_micros,
            }
            return [Upsert("usage_rentals", key, put=put)]
        if event.name == "GpuInstance.Metered":
            return [Upsert("usage_rentals", key, put={"gpu_fees": int(data["total"])})]
        return []
