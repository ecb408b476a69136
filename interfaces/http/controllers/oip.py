"""Open Inference Protocol v2 over REST, for hosted models (KServe / Triton compatible).

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2``: anyone.
- ``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``
  (and the same under ``/versions/1``): authenticated; ``{name}`` is the model id or the
  caller's model name. Models have one version, ``1``.
- Tensors as JSON ``data`` (flat or nested) or with Triton's binary tensor extension
  (``Inference-Header-Content-Length``, ``binary_data_size``, ``binary_data`` /
  ``binary_data_output``), which ``tritonclient.http`` uses by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from msgspec import Struct

from domain.errors import DomainError
from domain.models import ModelNotFoundError, ModelRecord
from infrastructure.db.setup import database_answers
from infrastructure.identity.auth import Principal
from infrastructure.models import tensors
from interfaces.http.openapi import AUTHED, PUBLIC, answers, binary_body, errors, operation
from interfaces.http.security import client_address, provide_principal
from interfaces.presenters.health import (
    InferResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
)

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

SERVER_NAME = "gpuproxy"
VERSION = "1"
PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "inference-header-content-length"


class OipRequestError(DomainError):
    status = 400
    title = "Invalid inference request"


class InputTensor(Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = {}
    data: Any = None


class OutputTensor(Struct):
    name: str
    parameters: dict[str, Any] = {}


class InferRequest(Struct):
    inputs: list[InputTensor]
    id: str | None = None
    parameters: dict[str, Any] = {}
    outputs: list[OutputTensor] | None = None


INFER_BODY = binary_body(
    "application/octet-stream",
    "An OIP inference request: JSON (`application/json`: inputs with `data`), or the JSON header "
    "followed by raw tensors (Triton binary tensor extension; Inference-Header-Content-Length)",
)
INFER = operation(body=INFER_BODY)
INFER_ERRORS = {
    **answers(
        InferResponse,
        200,
        description="The outputs (JSON). With binary outputs: application/octet-stream, this "
        "JSON header (Inference-Header-Content-Length bytes) then the raw tensors",
    ),
    **errors(*AUTHED, 404, 413, 503),
}
READY_ANSWERS = {
    **errors(401, 404, 429),
    **answers(ModelReady, 400, description="Not ready: the same body, ready false"),
}


def metadata(record: ModelRecord, name: str) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        versions=[VERSION],
        platform=PLATFORM,
        inputs=[s.to_json() for s in record.signature.inputs],
        outputs=[s.to_json() for s in record.signature.outputs],
    )


def _check_version(version: str) -> None:
    if version != VERSION:
        raise ModelNotFoundError(f"models have one version, {VERSION}", version=version)


# ------------------------------------------------------------------ health


@get(
    "/v2/health/live",
    summary="OIP: server live",
    operation_class=PUBLIC,
    description=(
        "Open Inference Protocol v2 liveness: 200 `{live: true}` while the server serves HTTP. "
        "Anyone may call it, without a credential; it changes nothing."
    ),
)
async def live() -> Live:
    return Live(live=True)


@get(
    "/v2/health/ready",
    sync_to_thread=True,
    summary="OIP: server ready (database answers)",
    operation_id="getServerReady",
    operation_class=PUBLIC,
    responses=answers(Ready, 503, description="Not ready"),
    description=(
        "Open Inference Protocol v2 server readiness: 200 `{ready: true}` when the database "
        "answers, 503 `{ready: false}` when it does not (clients read the status code). Anyone may "
        "call it, without a credential; it changes nothing."
    ),
)
def ready(c: NamedDependency[Container]) -> Response[Ready]:
    try:
        database_answers(c.db)
    except Exception:
        return Response(Ready(ready=False), status_code=503)
    return Response(Ready(ready=True))


@get(
    "/v2",
    summary="OIP: server metadata",
    operation_class=PUBLIC,
    description=(
        "Open Inference Protocol v2 server metadata: name, version and the extensions served (such "
        "as Triton's binary tensor data). Anyone may call it, without a credential; it changes "
        "nothing."
    ),
)
async def server_metadata() -> ServerMetadata:
    from interfaces.http.app import VERSION as APP_VERSION

    return ServerMetadata(name=SERVER_NAME, version=APP_VERSION, extensions=list(EXTENSIONS))


# ------------------------------------------------------------------ models


async def _metadata(c: Container, principal: Principal, name: str) -> ModelMetadata:
    record = await c.model_service().find(principal.user_id, name)
    return metadata(record, name)


async def _ready(c: Container, principal: Principal, name: str) -> Response[ModelReady]:
    """200 when ready, else 400 with the same body: the KServe v2 REST spec (and
    tritonclient's ``is_model_ready``) read the status code, 200 true, 4xx false."""
    record = await c.model_service().find(principal.user_id, name)
    ready = record.status == "ready"
    return Response(ModelReady(name=name, ready=ready), status_code=200 if ready else 400)


async def _infer(
    request: Request[Any, Any, Any], c: Container, principal: Principal, name: str
) -> Response[bytes]:
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise OipRequestError("compressed request bodies are not supported")
    body = await request.body()
    service = c.model_service()
    record = await service.find(principal.user_id, name)
    parsed, binary = _parse(body, request.headers.get(HEADER_LENGTH))
    inputs = _inputs(parsed, binary, record)
    wanted = tuple(o.name for o in parsed.outputs or ())
    caller = principal.caller(client_address(request.scope), request.headers.get("user-agent", ""))
    _, result = await service.predict(
        principal.user_id, name, inputs, outputs=wanted, strict=True, caller=caller
    )
    return _answer(parsed, record, name, result.outputs)


@get(
    "/models/{name:str}",
    summary="OIP: model metadata",
    responses=errors(*AUTHED, 404),
    description=(
        "Open Inference Protocol v2 metadata of one of the caller's models, named by id or name: "
        "platform, versions (only `1`) and the input and output tensors (name, datatype, shape). "
        "Changes nothing. 404 for an unknown model or one of another user."
    ),
)
async def model_metadata(
    c: NamedDependency[Container], principal: NamedDependency[Principal], name: FromPath[str]
) -> ModelMetadata:
    return await _metadata(c, principal, name)


@get(
    "/models/{name:str}/versions/{version:str}",
    summary="OIP: model metadata (version 1)",
    responses=errors(*AUTHED, 404),
    description=(
        "The same as GET /v2/models/{name} for version `1`, the only version a model has: any "
        "other version is 404, as is an unknown model or one of another user. Changes nothing."
    ),
)
async def model_version_metadata(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    name: FromPath[str],
    version: FromPath[str],
) -> ModelMetadata:
    _check_version(version)
    return await _metadata(c, principal, name)


@get(
    "/models/{name:str}/ready",
    summary="OIP: model ready",
    responses=READY_ANSWERS,
    description=(
        "Whether one of the caller's models can serve inference: 200 `{ready: true}`, or 400 with "
        "`{ready: false}` while it cannot (the KServe v2 spec and tritonclient read the status "
        "code). Changes nothing. 404 for an unknown model or one of another user."
    ),
)
async def model_ready(
    c: NamedDependency[Container], principal: NamedDependency[Principal], name: FromPath[str]
) -> Response[ModelReady]:
    return await _ready(c, principal, name)


@get(
    "/models/{name:str}/versions/{version:str}/ready",
    summary="OIP: model ready (version 1)",
    responses=READY_ANSWERS,
    description=(
        "The same as GET /v2/models/{name}/ready for version `1`, the only version a model has: "
        "any other version is 404, as is an unknown model or one of another user. Changes nothing."
    ),
)
async def model_version_ready(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    name: FromPath[str],
    version: FromPath[str],
) -> Response[ModelReady]:
    _check_version(version)
    return await _ready(c, principal, name)


@post(
    "/models/{name:str}/infer",
    status_code=200,
    summary="OIP: inference",
    operation_class=INFER,
    responses=INFER_ERRORS,
    description=(
        "Open Inference Protocol v2 inference on one of the caller's models: input tensors as JSON "
        "`data`, or with Triton's binary tensor extension (`Inference-Header-Content-Length`, "
        "`binary_data_size`); outputs as JSON or binary (`binary_data_output`). Each inference "
        "costs the per-request fee from a credit lease. 400 for a malformed request or tensors "
        "that do not fit the signature; 402 when credits or guard rails refuse the fee; 404 for an "
        "unknown model; 413 over the body limit; 503 when the model store is unavailable."
    ),
)
async def infer_model(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    name: FromPath[str],
) -> Response[bytes]:
    return await _infer(request, c, principal, name)


@post(
    "/models/{name:str}/versions/{version:str}/infer",
    status_code=200,
    summary="OIP: inference (version 1)",
    operation_class=INFER,
    responses=INFER_ERRORS,
    description=(
        "The same as POST /v2/models/{name}/infer for version `1`, the only version a model has: "
        "any other version is 404. Each inference costs the per-request fee from a credit lease "
        "(402 when refused); 400 for a malformed request; 413 over the body limit."
    ),
)
async def infer_model_version(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    name: FromPath[str],
    version: FromPath[str],
) -> Response[bytes]:
    _check_version(version)
    return await _infer(request, c, principal, name)


def _parse(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The JSON header (all of the body, or its first N bytes) and the binary rest."""
    split = len(body)
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise OipRequestError("Inference-Header-Content-Length is not a number") from None
        if not 0 < split <= len(body):
            raise OipRequestError("Inference-Header-Content-Length is outside the body")
    try:
        parsed = msgspec.json.decode(body[:split], type=InferRequest)
    except msgspec.ValidationError as exc:
        raise OipRequestError(f"invalid inference request: {exc}") from None
    except msgspec.DecodeError as exc:
        raise OipRequestError(f"the inference request is not JSON: {exc}") from None
    return parsed, body[split:]


def _inputs(parsed: InferRequest, binary: bytes, record: ModelRecord) -> dict[str, np.ndarray]:
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    signature = record.signature
    for tensor in parsed.inputs:
        if tensor.name in inputs:
            raise OipRequestError(f"input {tensor.name!r} is given twice")
        size = tensor.parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise OipRequestError(f"input {tensor.name!r}: binary_data_size is wrong")
            raw = binary[offset : offset + size]
            offset += size
            inputs[tensor.name] = tensors.from_raw(
                tensor.name, tensor.datatype, tensor.shape, raw, signature
            )
        elif tensor.data is None:
            raise OipRequestError(f"input {tensor.name!r} has no data")
        else:
            inputs[tensor.name] = tensors.from_oip(
                tensor.name, tensor.datatype, tensor.shape, tensor.data, signature
            )
    if offset != len(binary):
        raise OipRequestError("the binary part of the body does not match binary_data_size")
    return inputs


def _answer(
    parsed: InferRequest, record: ModelRecord, name: str, outputs: dict[str, np.ndarray]
) -> Response[bytes]:
    binary_default = bool(parsed.parameters.get("binary_data_output", False))
    wanted = {o.name: o.parameters for o in parsed.outputs or ()}
    datatypes = {s.name: s.datatype for s in record.signature.outputs}
    blobs: list[bytes] = []
    items = []
    for out_name, array in outputs.items():
        item: dict[str, Any] = {
            "name": out_name,
            "datatype": datatypes.get(out_name) or tensors.oip_type_of(array),
            "shape": list(array.shape),
        }
        if bool(wanted.get(out_name, {}).get("binary_data", binary_default)):
            raw = tensors.raw_bytes(array)
            item["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            item["data"] = tensors.flat_json(array)
        items.append(item)
    head: dict[str, Any] = {"model_name": name, "model_version": VERSION, "outputs": items}
    if parsed.id is not None:
        head["id"] = parsed.id
    encoded = msgspec.json.encode(head)
    if not blobs:
        return Response(encoded, media_type="application/json")
    return Response(
        b"".join([encoded, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(encoded))},
    )


def router(max_request_bytes: int) -> Router:
    """Authenticated OIP model routes; bodies up to ``max_request_bytes``."""
    return Router(
        path="/v2",
        tags=["oip"],
        dependencies={"principal": Provide(provide_principal)},
        request_max_body_size=max_request_bytes,
        route_handlers=[
            model_metadata,
            model_version_metadata,
            model_ready,
            model_version_ready,
            infer_model,
            infer_model_version,
        ],
    )


health = Router(path="/", tags=["oip"], route_handlers=[live, ready, server_metadata])
