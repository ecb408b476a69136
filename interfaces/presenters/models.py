"""Hosted models: one model, the list with the caller's quota, a deletion, a prediction."""

from __future__ import annotations

from typing import Any

from msgspec import Struct

from domain.models import ModelRecord


class Tensor(Struct):
    """A model input or output: name, OIP datatype, shape (-1 for a free dimension)."""

    name: str
    datatype: str
    shape: list[int]


class Signature(Struct):
    inputs: list[Tensor]
    outputs: list[Tensor]


class Endpoints(Struct):
    predict: str
    oip: str


class Model(Struct):
    """A hosted model (served as ONNX)."""

    model_id: str
    name: str
    format: str
    converted_to: str | None
    status: str
    runtime: str
    filename: str
    upload_bytes: int
    size_bytes: int
    storage: str
    sha256: str
    created_at: str
    signature: Signature
    endpoints: Endpoints


class Quota(Struct):
    storage_bytes_used: int
    storage_bytes_limit: int
    file_bytes_limit: int
    uploads_last_hour: int
    uploads_per_hour: int
    uploads_last_day: int
    uploads_per_day: int


class ModelList(Struct):
    models: list[Model]
    count: int
    quota: Quota


class Deleted(Struct):
    model_id: str
    name: str
    deleted: bool


class Prediction(Struct):
    """``output``: the first output; ``outputs``: every output by name."""

    model_id: str
    output: Any
    outputs: dict[str, Any]
    latency_ms: float
    runtime: str
    used_gpu: bool


def _tensors(specs: Any) -> list[Tensor]:
    return [Tensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in specs]


def present_model(record: ModelRecord) -> Model:
    return Model(
        model_id=record.model_id,
        name=record.name,
        format=record.format,
        converted_to=record.converted_to,
        status=record.status,
        runtime="onnxruntime",
        filename=record.filename,
        upload_bytes=record.upload_bytes,
        size_bytes=record.stored_bytes,
        storage=record.backend,
        sha256=record.sha256,
        created_at=record.created_at.isoformat(),
        signature=Signature(
            inputs=_tensors(record.signature.inputs), outputs=_tensors(record.signature.outputs)
        ),
        endpoints=Endpoints(
            predict=f"/api/v1/models/{record.model_id}/predict",
            oip=f"/v2/models/{record.model_id}/infer",
        ),
    )
