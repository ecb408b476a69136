"""The ledger replays stored events without the library's per-event runtime-Protocol check.

``eventsourcing``'s default projector asserts ``isinstance(event, CanMutateProtocol)`` for every
event it applies; against a runtime-checkable Protocol that costs more than the mutation (about
190 µs an event here), on every load of an account past its snapshot and on every
``balance --at``. ``LedgerApp``'s repository replays with ``domain.services.ledger.replay``
(docs/adr/0036).
"""

from __future__ import annotations

import inspect
from typing import Any

import eventsourcing.application as es_application
import pytest
from eventsourcing.application import Repository, project_aggregate

from domain.credits import CreditAccount, account_id_for
from domain.services.ledger import LedgerService, ReplayingRepository, replay

USD = 1_000_000


class _CountingMeta(type):
    checks = 0

    def __instancecheck__(cls, instance: Any) -> bool:
        _CountingMeta.checks += 1
        return True


class _CountingProtocol(metaclass=_CountingMeta):
    """Stands in for ``CanMutateProtocol`` in the library's projector, counting its checks."""


def test_loading_an_account_checks_no_event_against_a_runtime_protocol(
    ledger: LedgerService, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        ledger.grant("u1", USD, key=f"g{n}")
    monkeypatch.setattr(es_application, "CanMutateProtocol", _CountingProtocol)
    _CountingMeta.checks = 0
    account_id = account_id_for("u1")
    ledger.app.repository.get(account_id, version=5)
    ledger.app.repository.get(account_id)
    assert _CountingMeta.checks == 0


def test_replay_folds_to_the_same_state_as_the_library(ledger: LedgerService) -> None:
    for n in range(5):
        ledger.grant("u1", (n + 1) * USD, key=f"g{n}")
        ledger.charge("u1", USD // 4, key=f"c{n}")
    account_id = account_id_for("u1")
    for version in (1, 4, 11):
        ours: CreditAccount = ledger.app.repository.get(account_id, version=version)
        library: Any = project_aggregate
        theirs: CreditAccount = ledger.app.repository.get(
            account_id, version=version, projector_func=library
        )
        assert vars(ours) == vars(theirs)
        assert ours.version == version


def test_the_repository_is_the_library_one_with_replay_as_its_default(
    ledger: LedgerService,
) -> None:
    repository = ledger.app.repository
    assert type(repository) is ReplayingRepository
    assert isinstance(repository, Repository)
    assert inspect.signature(ReplayingRepository.get).parameters["projector_func"].default is (
        replay
    )
    # the override passes every keyword the library's get takes (pinned eventsourcing)
    assert list(inspect.signature(Repository.get).parameters) == list(
        inspect.signature(ReplayingRepository.get).parameters
    )
