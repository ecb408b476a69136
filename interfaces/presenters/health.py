"""Liveness, readiness and OIP server answers."""

from __future__ import annotations

from typing import Any

from msgspec import Struct


class Health(Struct):
    """``pid``: the server process that answered (one of several with ``WORKERS``)."""

    status: str
    timestamp: str
    pid: int


class Readiness(Struct):
    """``checks``: database, redis (when configured), projection_lag per projection."""

    status: str
    checks: dict[str, Any]


class Live(Struct):
    live: bool


class Ready(Struct):
    ready: bool


class ServerMetadata(Struct):
    name: str
    version: str
    extensions: list[str]


class ModelReady(Struct):
    name: str
    ready: bool


class ModelMetadata(Struct):
    name: str
    versions: list[str]
    platform: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
