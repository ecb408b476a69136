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


class InferOutput(Struct, omit_defaults=True):
    """One output tensor: ``data`` (flat, row-major), or ``parameters.binary_data_size`` when
    it follows the JSON header as raw bytes (Triton's binary tensor extension)."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(Struct, omit_defaults=True):
    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str | None = None
