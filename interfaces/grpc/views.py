"""gRPC answers in the REST API's JSON shapes, so the CLI prints the same either way."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import betterproto

from domain.money import micros_to_usd, usd_to_micros
from interfaces.grpc.convert import EPOCH
from interfaces.grpc.generated import gpuproxy as pb


def usd(value: float) -> str:
    """A wire double as the REST decimal string ("12.50"), exactly."""
    return micros_to_usd(usd_to_micros(Decimal(repr(value))))


def iso(moment: datetime) -> str | None:
    return None if moment == EPOCH else moment.isoformat()


def offer_json(o: pb.GpuInstance) -> dict[str, Any]:
    return {
        "id": o.id,
        "provider": o.provider,
        "gpu_model": o.gpu_model,
        "num_gpus": o.num_gpus,
        "vram_gb": o.vram_gb,
        "price_per_hour": usd(o.price_per_hour),
        "location": o.location,
        "reliability": o.reliability,
        "metadata": dict(o.metadata),
    }


def rental_json(r: pb.Rental) -> dict[str, Any]:
    return {
        "id": r.id,
        "provider": r.provider,
        "offer_id": r.offer_id,
        "provider_instance_id": r.provider_instance_id or None,
        "state": r.state,
        "gpu_model": r.gpu_model,
        "num_gpus": r.num_gpus,
        "price_per_hour": usd(r.price_per_hour),
        "endpoint": r.endpoint or None,
        "image": r.image,
        "requested_at": iso(r.requested_at),
        "started_at": iso(r.started_at),
        "ended_at": iso(r.ended_at),
        "billed": usd(r.billed),
        "cost_so_far": usd(r.cost_so_far),
        "reason": r.reason or None,
    }


def reservation_json(r: pb.Reservation) -> dict[str, Any]:
    return {
        "id": r.id,
        "state": r.state,
        "count": r.count,
        "gpus": r.gpus,
        "provider": r.provider,
        "instances": list(r.instances),
        "failed_attempts": [
            {"provider": a.provider, "offer_id": a.offer_id, "reason": a.reason}
            for a in r.failed_attempts
        ],
        "reason": r.reason or None,
        "held": usd(r.held),
    }


def credits_json(c: pb.GetCreditsResponse) -> dict[str, Any]:
    return {
        "credits_remaining": usd(c.credits_remaining),
        "credits_available": usd(c.credits_available),
        "credits_held": usd(c.credits_held),
        "credits_total": usd(c.credits_total),
        "credits_spent": usd(c.credits_spent),
        "credits_overage": usd(c.credits_overage),
        "credits_cap": usd(c.credits_cap),
        "credits_auto_renew": {
            "enabled": c.auto_renew_enabled,
            "threshold": usd(c.auto_renew_threshold),
            "amount": usd(c.auto_renew_amount),
        },
        "currency": c.currency or "USD",
    }


def transaction_json(t: pb.Transaction) -> dict[str, Any]:
    return {
        "id": int(t.id),
        "type": t.type,
        "amount": usd(t.amount),
        "hold_id": t.hold_id or None,
        "reason": t.description,
        "reference": t.reference,
        "created_at": iso(t.created_at),
    }


def payment_row_json(p: pb.PaymentRecord) -> dict[str, Any]:
    return {
        "id": p.id,
        "status": p.status,
        "amount": usd(p.amount),
        "currency": p.currency,
        "provider": p.provider,
        "payment_method": p.payment_method,
        "credited": usd(p.credited),
        "refunded": usd(p.refunded),
        "failure": p.failure or None,
        "created_at": iso(p.created_at),
    }


def payment_json(p: pb.CreatePaymentResponse) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": p.payment_id,
        "status": p.status,
        "amount": usd(p.amount),
        "currency": p.currency,
        "provider": p.provider,
        "credited": usd(p.credited),
        "failure": p.failure or None,
        "next_action_url": p.next_action_url or None,
        "idempotency_key": p.idempotency_key,
        "replayed": p.replayed,
    }
    if betterproto.serialized_on_wire(p.crypto):
        body["crypto"] = {
            "network": p.crypto.network,
            "token": p.crypto.token,
            "token_contract": p.crypto.token_contract,
            "pay_to": p.crypto.pay_to,
            "from_wallet": p.crypto.from_wallet,
            "amount_units": p.crypto.amount_units,
            "expires_at": iso(p.crypto.expires_at),
        }
    return body


def spending_json(s: pb.GetSpendingInfoResponse) -> dict[str, Any]:
    limited = [w for w in s.windows if w.limited]
    return {
        "guard_rails_enabled": s.guard_rails_enabled,
        "window_spent": {w.window: usd(w.spent) for w in s.windows},
        "held": usd(s.windows[0].held if s.windows else 0.0),
        "limits": {w.window: usd(w.limit) for w in limited},
        "remaining": {w.window: usd(w.remaining) for w in limited},
        "exceeded": [w.window for w in limited if w.exceeded],
        "total_spent_24h": usd(s.total_spent_24_h),
    }


def load_json(info: pb.GetLoadInfoResponse, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {"strategy": info.current_strategy}
    if kind in {"server", "all"}:
        instances = [
            {
                "instance_id": row.instance_id,
                "provider": row.provider,
                "gpu_model": row.gpu_model,
                "state": row.state,
                "active_connections": row.connections,
                "avg_response_time_ms": row.avg_response_time_ms or None,
                "consecutive_failures": row.consecutive_failures,
                "ejected": row.ejected,
                "total_requests": row.total_requests,
                "total_errors": row.total_errors,
                "mean_latency_ms": row.mean_latency_ms or None,
                "load_score": row.load_score,
            }
            for row in info.server_load
        ]
        body["server"] = {"instances": instances, "count": len(instances)}
    if kind in {"provider", "all"}:
        body["provider"] = {
            row.provider: {
                "instances": row.instances,
                "active_connections": row.connections,
                "total_requests": row.total_requests,
                "total_errors": row.total_errors,
                "load_score": row.load_score,
            }
            for row in info.provider_load
        }
    if info.lease_held or info.lease_spent:
        body["lease"] = {"held": usd(info.lease_held), "spent": usd(info.lease_spent)}
    return body
