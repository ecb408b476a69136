"""A cheap "this user's instances changed" signal, so every process may cache instance lists.

The marketplace bumps the owner's signal after saving a change into or out of ``running``
(before the command answers); the proxy reuses a cached instance list only while the signal
still reads what it read before that list was loaded. So the answer "running" or "destroyed"
is what the user's next proxied request sees, on any process.

- ``RedisInstanceSignal`` (replicas sharing Redis): a counter per user, one ``GET`` a lookup.
- ``FileInstanceSignal`` (embedded set-up, one machine): one file in ``DATA_DIR`` for all
  users that grows a byte per bump; reading it is one ``stat``.
- ``NoInstanceSignal`` (PostgreSQL without Redis): never equal, so every lookup reloads.

A signal that cannot be read (Redis down) reads as "changed"; a bump that fails is logged
(the list's one-second reuse then bounds how long a change can go unseen).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class InstanceSignal(Protocol):
    cheap: bool  # True: ``read`` may run on the event loop (no network)

    def read(self, owner: str) -> object: ...
    def bump(self, owner: str) -> None: ...


class RedisInstanceSignal:
    cheap = False
    PREFIX = "gpuproxy:instances-epoch:"

    def __init__(self, client: Any) -> None:
        self.client = client

    def read(self, owner: str) -> object:
        try:
            value = self.client.get(self.PREFIX + owner)
        except Exception:  # Redis unreachable: trust no cached list
            log.warning("instance signal unreadable; reloading instances", exc_info=True)
            return object()
        return 0 if value is None else int(value)

    def bump(self, owner: str) -> None:
        try:
            self.client.incr(self.PREFIX + owner)
        except Exception:
            log.warning("instance signal for %s not bumped", owner, exc_info=True)


class FileInstanceSignal:
    cheap = True

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self, owner: str) -> object:  # noqa: ARG002 - one file for every user
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def bump(self, owner: str) -> None:  # noqa: ARG002 - one file for every user
        with self.path.open("ab") as handle:
            handle.write(b".")


class LocalInstanceSignal:
    """One process only (a runtime built without a shared signal): counters in memory."""

    cheap = True

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def read(self, owner: str) -> object:
        return self._counts.get(owner, 0)

    def bump(self, owner: str) -> None:
        self._counts[owner] = self._counts.get(owner, 0) + 1


class NoInstanceSignal:
    cheap = True

    def read(self, owner: str) -> object:  # noqa: ARG002 - nothing to read
        return object()  # equal to nothing: every lookup reloads

    def bump(self, owner: str) -> None:  # noqa: ARG002 - nothing to tell
        return None


def instance_signal(db_type: str, data_dir: Path, redis: Any | None) -> InstanceSignal:
    """The signal for this set-up (see the module docstring)."""
    if redis is not None:
        return RedisInstanceSignal(redis)
    if db_type == "sqlite":
        return FileInstanceSignal(data_dir / "instances.epoch")
    return NoInstanceSignal()
