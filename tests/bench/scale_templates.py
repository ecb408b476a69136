"""Stored-event templates: one per event kind, made by the real aggregates and mapper.

Each kind's builder runs the real domain command (``CreditAccount.charge``,
``GpuInstance.mark_running``, ``Payment.succeed``…) with sentinel values and encodes the event
with the application's mapper; the sentinels in the JSON become format fields. Rendering a
template with values is then a ``str.format`` instead of a command plus a JSON encode.
``Templates.check`` encodes a real event built with ordinary values and compares it byte for
byte with the rendered template, so the generator refuses to run if a template drifts from
what the application stores.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import eventsourcing.domain as es_domain
from eventsourcing.persistence import Mapper

from domain.credits import CreditAccount
from domain.guardrails import GuardrailPolicy
from domain.instances import GpuInstance
from domain.payments import Payment
from domain.usage import ProxyUsage

OFF = GuardrailPolicy()
BIG = 10**15
USAGE_ROWS = [
    {
        "instance_id": f"00000000-0000-4000-8000-{i:012d}",
        "owner": f"user-{i:06d}",
        "provider": "vastai",
        "requests": 10 + i,
        "errors": i % 2,
        "latency_ms_sum": 1_000 + 37 * i,
    }
    for i in range(3)
]

SENTINELS: dict[str, Any] = {
    "user": "SxUSER",
    "key": "SxKEY",
    "ref": "SxREF",
    "hold": "SxHOLD",
    "reason": "SxREASON",
    "actor": "SxACTOR",
    "ext": "SxEXT",
    "fp": "SxFP",
    "pid": "SxPID",
    "amount": 987_654_321,
    "price": 876_543_210,
    "pprice": 765_432_109,
    "port": 7_654_321,
    "at": datetime(2001, 2, 3, 4, 5, 6, 70_809, tzinfo=UTC),
    "exp": datetime(2002, 3, 4, 5, 6, 7, 80_910, tzinfo=UTC),
    "iid": UUID("12345678-9abc-4def-8123-456789abcdef"),
}


def _last(aggregate: Any) -> Any:
    return aggregate.collect_events()[-1]


def _account(v: dict[str, Any], *, funded: bool = True) -> CreditAccount:
    account = CreditAccount(user_id=v["user"], at=v["at"])
    if funded:
        account.grant(BIG, key="seed", now=v["at"], source="admin")
    return account


def _held(v: dict[str, Any]) -> CreditAccount:
    account = _account(v)
    account.place_hold(v["hold"], BIG, expires_at=v["exp"], key="h", now=v["at"], policy=OFF)
    return account


def _instance(v: dict[str, Any]) -> GpuInstance:
    return GpuInstance(
        instance_id=v["iid"],
        owner=v["user"],
        provider="vastai",
        offer_id="offer-1",
        gpu_model="RTX 4090",
        num_gpus=1,
        price_per_hour=v["price"],
        provider_price_per_hour=v["pprice"],
        hold_id=v["hold"],
        image="pytorch/pytorch:2.4",
        at=v["at"],
        vram_gb=24.0,
    )


def _payment(v: dict[str, Any]) -> Payment:
    return Payment(
        owner=v["user"],
        key=v["key"],
        amount=v["amount"],
        currency="usd",
        processor="stripe",
        method={"type": "card", "brand": "visa", "last4": "4242"},
        fingerprint=v["fp"],
        at=v["at"],
    )


def _opened(v: dict[str, Any]) -> Any:
    return _last(_account(v, funded=False))


def _granted(v: dict[str, Any]) -> Any:
    a = _account(v, funded=False)
    a.grant(
        v["amount"], key=v["key"], now=v["at"], source="payment", reference=v["ref"], actor="stripe"
    )
    return _last(a)


def _charged(v: dict[str, Any]) -> Any:
    a = _account(v)
    a.charge(
        v["amount"],
        key=v["key"],
        now=v["at"],
        policy=OFF,
        reason=v["reason"],
        reference=v["ref"],
        actor=v["actor"],
    )
    return _last(a)


def _hold_placed(v: dict[str, Any]) -> Any:
    a = _account(v)
    a.place_hold(
        v["hold"],
        v["amount"],
        expires_at=v["exp"],
        key=v["key"],
        now=v["at"],
        policy=OFF,
        reason="instance rental",
        reference=v["ref"],
        actor="marketplace",
    )
    return _last(a)


def _hold_captured(v: dict[str, Any]) -> Any:
    a = _held(v)
    a.capture(v["hold"], v["amount"], key=v["key"], now=v["at"], reason="gpu time")
    return _last(a)


def _hold_released(v: dict[str, Any]) -> Any:
    a = _account(v)
    a.place_hold(v["hold"], v["amount"], expires_at=v["exp"], key="h", now=v["at"], policy=OFF)
    a.release(v["hold"], key=v["key"], now=v["at"], actor="marketplace")
    return _last(a)


def _hold_expired(v: dict[str, Any]) -> Any:
    early = datetime(1999, 1, 1, tzinfo=UTC)
    a = CreditAccount(user_id=v["user"], at=early)
    a.grant(BIG, key="seed", now=early, source="admin")
    a.place_hold(
        v["hold"], v["amount"], expires_at=early.replace(month=6), key="h", now=early, policy=OFF
    )
    a.expire_holds(v["at"])
    return _last(a)


def _debited(v: dict[str, Any]) -> Any:
    a = _account(v)
    a.debit(
        v["amount"],
        key=v["key"],
        now=v["at"],
        kind="adjustment",
        reason="support adjustment",
        actor="admin-cli:ops",
    )
    return _last(a)


def _requested(v: dict[str, Any]) -> Any:
    return _last(_instance(v))


def _provisioning(v: dict[str, Any]) -> Any:
    i = _instance(v)
    i.mark_provisioning(v["pid"], now=v["at"])
    return _last(i)


def _running(v: dict[str, Any]) -> Any:
    i = _instance(v)
    i.mark_provisioning(v["pid"], now=v["at"])
    i.mark_running("127.0.0.1", v["port"], now=v["at"])
    return _last(i)


def _metered(v: dict[str, Any]) -> Any:
    i = _instance(v)
    i.record_metering(v["amount"], v["at"], v["hold"])
    return _last(i)


def _stop_requested(v: dict[str, Any]) -> Any:
    i = _instance(v)
    i.request_stop("user stop", "user", now=v["at"])
    return _last(i)


def _terminated(v: dict[str, Any]) -> Any:
    i = _instance(v)
    i.request_stop("user stop", "user", now=v["at"])
    i.mark_terminated("stopped", now=v["at"])
    return _last(i)


def _initiated(v: dict[str, Any]) -> Any:
    return _last(_payment(v))


def _pending(v: dict[str, Any]) -> Any:
    p = _payment(v)
    p.mark_pending(v["ext"], now=v["at"])
    return _last(p)


def _succeeded(v: dict[str, Any]) -> Any:
    p = _payment(v)
    p.mark_pending(v["ext"], now=v["at"])
    p.succeed(external_id=v["ext"], credited=v["amount"], now=v["at"])
    return _last(p)


def _usage(v: dict[str, Any]) -> Any:
    return _last(ProxyUsage(process_id="proxy-1", rows=USAGE_ROWS, at=v["at"]))


BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "Opened": _opened,
    "Granted": _granted,
    "Charged": _charged,
    "HoldPlaced": _hold_placed,
    "HoldCaptured": _hold_captured,
    "HoldReleased": _hold_released,
    "HoldExpired": _hold_expired,
    "Debited": _debited,
    "Requested": _requested,
    "Provisioning": _provisioning,
    "Running": _running,
    "Metered": _metered,
    "StopRequested": _stop_requested,
    "Terminated": _terminated,
    "Initiated": _initiated,
    "Pending": _pending,
    "Succeeded": _succeeded,
    "Recorded": _usage,
}


def _stamped(build: Callable[[dict[str, Any]], Any], v: dict[str, Any]) -> Any:
    """Build with the library's timestamps at ``v["at"]`` (the generator's business time)."""
    original = es_domain.datetime_now_with_tzinfo
    es_domain.datetime_now_with_tzinfo = lambda: v["at"]
    try:
        return build(v)
    finally:
        es_domain.datetime_now_with_tzinfo = original


@dataclass(frozen=True)
class Template:
    topic: str
    text: str  # str.format text over the sentinel names

    def render(self, **values: Any) -> bytes:
        return self.text.format(**values).encode()


def make_template(mapper: Mapper[UUID], kind: str) -> Template:
    stored = mapper.to_stored_event(_stamped(BUILDERS[kind], SENTINELS))
    text = stored.state.decode().replace("{", "{{").replace("}", "}}")
    for name, value in SENTINELS.items():
        if isinstance(value, datetime):
            text = text.replace(f'"{value.isoformat()}"', f'"{{{name}}}"')
        elif isinstance(value, str):
            text = text.replace(f'"{value}"', f'"{{{name}}}"')
        elif isinstance(value, UUID):
            text = text.replace(value.hex, f"{{{name}}}").replace(str(value), f"{{{name}}}")
        else:
            text = re.sub(rf"(?<![0-9]){value}(?![0-9])", f"{{{name}}}", text)
    return Template(stored.topic, text)


def value_text(values: dict[str, Any]) -> dict[str, Any]:
    """Values as the template expects them (datetimes in ISO form, ids as hex)."""
    out = dict(values)
    for name, value in values.items():
        if isinstance(value, datetime):
            out[name] = value.isoformat()
        elif isinstance(value, UUID):
            out[name] = value.hex
    return out


class Templates:
    """Every kind's template, checked against the real mapper once."""

    def __init__(self, mapper: Mapper[UUID]) -> None:
        self.mapper = mapper
        self.by_kind = {kind: make_template(mapper, kind) for kind in BUILDERS}

    def check(self) -> None:
        """Raise unless every template renders exactly what the mapper stores."""
        sample = {
            "user": "user-000042",
            "key": "px-17",
            "ref": "req-user-000042-17",
            "hold": "inst-0b4f",
            "reason": "proxy request",
            "actor": "proxy",
            "ext": "pi_user_17",
            "fp": "fp-17",
            "pid": "vast-17",
            "amount": 4_321,
            "price": 1_500_000,
            "pprice": 1_200_000,
            "port": 20_017,
            "at": datetime(2026, 3, 4, 5, 6, 7, 891_011, tzinfo=UTC),
            "exp": datetime(2026, 3, 11, 5, 6, 7, tzinfo=UTC),
            "iid": UUID("0b4f6f1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b"),
        }
        for kind, template in self.by_kind.items():
            expected = self.mapper.to_stored_event(_stamped(BUILDERS[kind], sample))
            rendered = template.render(**value_text(sample))
            if expected.state != rendered or expected.topic != template.topic:
                raise AssertionError(
                    f"template {kind} renders {rendered!r}, not {expected.state!r}"
                )
