"""One fingerprint table per keyed event: the command, the apply step and the key table agree.

The fingerprint strings are stored (in snapshots' ``keys`` and in the key table), so their
exact text is pinned here too.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest

from domain.credits import FINGERPRINTS, CreditAccount, event_key, fingerprint, recorded_key
from domain.errors import IdempotencyConflictError
from domain.guardrails import GuardrailPolicy

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
EXPIRES = T0 + timedelta(hours=1, microseconds=7)
OFF = GuardrailPolicy()


def _account() -> CreditAccount:
    account = CreditAccount(user_id="u", at=T0)
    account.grant(1_000_000, key="g", now=T0, source="payment", reference="pay-1")
    account.charge(10, key="c", now=T0, policy=OFF, reference="r")
    account.place_hold("h1", 100, expires_at=EXPIRES, key="h", now=T0, policy=OFF)
    account.capture("h1", 40, key="cap", now=T0)
    account.release("h1", key="rel", now=T0)
    account.debit(5, key="d", now=T0, kind="adjustment", reference="x")
    return account


STORED = {
    "g": "grant:1000000:payment:pay-1",
    "c": "charge:10:r",
    "h": f"hold:h1:100:{EXPIRES.isoformat()}",
    "cap": "capture:h1:40",
    "rel": "release:h1",
    "d": "debit:5:adjustment:x",
}


def test_fingerprint_text_is_unchanged_from_what_is_stored() -> None:
    account = _account()
    assert {key: fp for key, (fp, _) in account.keys.items() if key != "seed"} == STORED
    rows = [r for r in map(event_key, account.collect_events()) if r is not None]
    assert {key: fp for key, fp, _ in rows} == STORED


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_every_fingerprint_field_is_a_field_of_its_event(name: str) -> None:
    event_class: type = getattr(CreditAccount, name)
    parameters = set(inspect.signature(event_class).parameters)
    assert set(FINGERPRINTS[name][1]) <= parameters
    assert {"key", "at"} <= parameters


def test_stored_iso_datetimes_give_the_same_fingerprint_as_datetimes() -> None:
    data = {"hold_id": "h1", "amount": 100, "expires_at": EXPIRES, "key": "h", "at": T0}
    stored = {**data, "expires_at": EXPIRES.isoformat(), "at": T0.isoformat()}
    assert fingerprint("HoldPlaced", data) == fingerprint("HoldPlaced", stored) == STORED["h"]
    assert recorded_key("HoldPlaced", stored) == recorded_key("HoldPlaced", data)


def test_events_without_a_key_record_no_row() -> None:
    assert recorded_key("HoldExpired", {"hold_id": "h", "amount": 1, "at": T0}) is None


def test_a_replayed_command_is_one_effect_and_other_parameters_conflict() -> None:
    account = _account()
    version = account.version
    assert account.grant(1_000_000, key="g", now=T0, source="payment", reference="pay-1") is False
    assert account.charge(10, key="c", now=T0, policy=OFF, reference="r") is False
    assert account.debit(5, key="d", now=T0, kind="adjustment", reference="x") is False
    assert account.release("h1", key="rel", now=T0) is False
    assert account.capture("h1", 40, key="cap", now=T0) is False
    assert account.version == version
    with pytest.raises(IdempotencyConflictError):
        account.grant(1_000_000, key="g", now=T0, source="payment", reference="pay-2")
    with pytest.raises(IdempotencyConflictError):
        account.debit(5, key="d", now=T0, kind="refund", reference="x")
    with pytest.raises(IdempotencyConflictError):
        account.place_hold(
            "h1", 100, expires_at=EXPIRES + timedelta(seconds=1), key="h", now=T0, policy=OFF
        )
