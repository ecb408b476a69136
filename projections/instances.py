"""Read model of GPU rentals: one row per GpuInstance, for listings and background jobs."""

from __future__ import annotations

from collections.abc import Iterable

from projections.base import Op, Recorded, Upsert, to_micros

PREFIX = "GpuInstance."


class InstancesProjection:
    name = "instances"
    tables = ("instances",)
    events = (PREFIX + "%",)

    def fold(self, event: Recorded) -> Iterable[Op]:
        if not event.name.startswith(PREFIX):
            return []
        kind = event.name[len(PREFIX) :]
        data = event.data
        at = event.at_micros
        put: dict[str, object]
        if kind == "Requested":
            put = {
                "owner": data["owner"],
                "provider": data["provider"],
                "offer_id": data["offer_id"],
                "gpu_model": data["gpu_model"],
                "num_gpus": int(data["num_gpus"]),
                "price_per_hour": int(data["price_per_hour"]),
                "image": data["image"],
                "vram_gb": float(data.get("vram_gb", 0.0)),
                "state": "requested",
                "requested_at": at,
            }
        elif kind == "Provisioning":
            put = {"state": "provisioning", "provider_instance_id": data["provider_instance_id"]}
        elif kind == "Running":
            put = {
                "state": "running",
                "host": data["host"] or "",
                "port": int(data["port"] or 0),
                "started_at": at,
            }
        elif kind == "StopRequested":
            put = {"state": "stopping", "reason": data["reason"], "ended_at": at}
        elif kind in {"Terminated", "Failed"}:
            ended = to_micros(data["ended_at"])
            put = {"state": kind.lower(), "reason": data["reason"], "ended_at": ended}
        elif kind == "Metered":
            put = {"billed": int(data["total"])}
        else:
            return []
        return [Upsert("instances", {"instance_id": str(event.originator_id)}, put=put)]
