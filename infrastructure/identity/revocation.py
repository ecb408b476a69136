"""A cheap "credentials changed somewhere" signal, so verified API keys can be cached safely.

Every revocation or role change bumps the signal *after* its row is committed; a cached
verification is used only while the signal still reads what it read before that
verification's row read. So a revocation by any process is honoured by the next request.

- ``FileSignal`` (embedded set-up, one machine): a file in ``DATA_DIR`` that grows one byte
  per bump; reading it is one ``stat``.
- ``RedisSignal`` (replicas sharing Redis): a counter, one ``GET`` per request. A missing
  counter (never set, or lost in a Redis restart without data, sessions with it) starts at a
  random value, so no process trusts what it verified under the old counter.
- ``NoSignal``: never equal, so every request reads the key's row (still correct).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Protocol


class RevocationSignal(Protocol):
    def read(self) -> object: ...
    def bump(self) -> None: ...


class FileSignal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> object:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def bump(self) -> None:
        with self.path.open("ab") as handle:
            handle.write(b".")


class RedisSignal:
    KEY = "gpuproxy:credentials-epoch"

    def __init__(self, client: Any) -> None:
        self.client = client

    def read(self) -> object:
        value = self.client.get(self.KEY)
        if value is None:
            self.client.set(self.KEY, secrets.randbits(62), nx=True)
            value = self.client.get(self.KEY)
        return object() if value is None else int(value)  # gone again: trust nothing

    def bump(self) -> None:
        self.client.incr(self.KEY)


class NoSignal:
    def read(self) -> object:
        return object()  # equal to nothing: the cache is never trusted

    def bump(self) -> None:
        return None
