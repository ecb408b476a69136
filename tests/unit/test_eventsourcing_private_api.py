"""``LedgerApp.save`` leans on private parts of eventsourcing: fail loudly when they change.

docs/adr/0006: the override calls ``Application._record`` and ``Application._notify`` and fills
``ProcessingEvent.saved_kwargs`` (the idempotency keys reach the recorder through it). These
are not public API, so the version is pinned in pyproject.toml and their shapes are pinned here.
"""

from __future__ import annotations

import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _pinned_requirement() -> Requirement:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = [Requirement(d) for d in dependencies if Requirement(d).name == "eventsourcing"]
    assert len(found) == 1, "pyproject.toml must name eventsourcing once"
    return found[0]


def test_installed_eventsourcing_is_within_the_pinned_range() -> None:
    requirement = _pinned_requirement()
    assert str(requirement.specifier), "eventsourcing must be pinned (private API in use)"
    assert requirement.specifier.contains(version("eventsourcing"))


def test_the_pin_excludes_the_next_minor_release() -> None:
    assert not _pinned_requirement().specifier.contains("9.6.0")


def test_private_record_and_notify_keep_their_signatures() -> None:
    assert str(inspect.signature(Application._record)) == (
        "(self, processing_event: 'ProcessingEvent[TAggregateID]')"
        " -> 'list[Recording[TAggregateID]]'"
    )
    assert str(inspect.signature(Application._notify)) == (
        "(self, recordings: 'list[Recording[TAggregateID]]') -> 'None'"
    )


def test_record_passes_saved_kwargs_to_the_event_store() -> None:
    names = Application._record.__code__.co_names
    assert {"events", "put", "saved_kwargs", "tracking"} <= set(names)


def test_processing_event_keeps_the_fields_the_override_fills() -> None:
    event: ProcessingEvent[UUID] = ProcessingEvent()
    assert event.events == []
    assert event.aggregates == {}
    assert event.saved_kwargs == {}
    assert event.tracking is None


def test_library_save_still_records_then_snapshots_then_notifies() -> None:
    """The override mirrors this order; a new step in the library's save needs a look."""
    names = list(Application.save.__code__.co_names)
    steps = [n for n in names if n in {"_record", "_take_snapshots", "_notify", "notify"}]
    assert steps == ["_record", "_take_snapshots", "_notify", "notify"]
