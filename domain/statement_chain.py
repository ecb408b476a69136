"""Tamper-evident statements: a SHA-256 hash chain over an account's events (docs/events.md).

Each event's canonical record is the JSON of ``{"originator_id", "version", "topic", "state"}``
(``state`` as the decoded stored JSON) with sorted keys, no whitespace, UTF-8. The chain starts
at ``GENESIS`` and each link is ``sha256(previous_hex + record)``. A month's closing hash is
the chain after the account's last event before the month ends; its opening hash is the
previous month's closing hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.statements import month_bounds

GENESIS = "0" * 64


@dataclass(frozen=True)
class StoredRecord:
    """One stored event of the account, decoded but not interpreted."""

    originator_id: UUID
    version: int
    topic: str
    state: Mapping[str, Any]
    at: datetime


@dataclass(frozen=True)
class Link:
    version: int
    topic: str
    at: datetime
    hash: str


@dataclass(frozen=True)
class MonthChain:
    month: str
    opening_hash: str
    closing_hash: str
    links: tuple[Link, ...]


def canonical(record: StoredRecord) -> bytes:
    """The bytes hashed for one event (stable across SQLite, PostgreSQL and key order)."""
    body = {
        "originator_id": str(record.originator_id),
        "version": record.version,
        "topic": record.topic,
        "state": record.state,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def link(previous: str, record: StoredRecord) -> str:
    return hashlib.sha256(previous.encode("ascii") + canonical(record)).hexdigest()


class MonthChainBuilder:
    """``month_chain`` fed one record at a time, from any point of the chain: ``start_hash`` is
    the chain after the record before the first one given (``GENESIS`` before version 1)."""

    def __init__(self, month: str, start_hash: str = GENESIS) -> None:
        self.month = month
        self.start, self.end = month_bounds(month)
        self.current = self.opening = start_hash
        self.links: list[Link] = []

    def add(self, record: StoredRecord) -> bool:
        """Link ``record``; False (and nothing linked) once records reach the month's end."""
        if record.at >= self.end:
            return False
        self.current = link(self.current, record)
        if record.at < self.start:
            self.opening = self.current
        else:
            self.links.append(Link(record.version, record.topic, record.at, self.current))
        return True

    def result(self) -> MonthChain:
        return MonthChain(self.month, self.opening, self.current, tuple(self.links))


def month_chain(
    month: str, records: Iterable[StoredRecord], start_hash: str = GENESIS
) -> MonthChain:
    """The chain for ``month`` from the account's events in log (version) order (from version
    1, or from just after the record whose chain ``start_hash`` is)."""
    builder = MonthChainBuilder(month, start_hash)
    for record in records:
        if not builder.add(record):
            break
    return builder.result()


def first_mismatch(
    recorded_opening: str, recorded: Sequence[tuple[int, str]], actual: MonthChain
) -> str | None:
    """What first differs between the links recorded at statement time and now (None: same)."""
    if recorded_opening != actual.opening_hash:
        return f"{actual.month}: an event before this month changed (opening hash differs)"
    for index, (version, digest) in enumerate(recorded):
        if index >= len(actual.links):
            return f"{actual.month}: event version {version} is missing"
        now = actual.links[index]
        if now.version != version:
            return f"{actual.month}: event version {version} is missing (found {now.version})"
        if now.hash != digest:
            name = now.topic.rpartition(":")[2]
            return f"{actual.month}: event version {version} ({name}) no longer matches"
    if len(actual.links) > len(recorded):
        extra = actual.links[len(recorded)]
        return f"{actual.month}: event version {extra.version} was added after the statement"
    return None
