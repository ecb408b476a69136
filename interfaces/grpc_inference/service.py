"""``inference.GRPCInferenceService`` (Open Inference Protocol v2 over gRPC) for hosted models.

Construct it from the container and add it to a grpclib ``Server`` next to the other services
(on the HTTP app's event loop: it shares the process's ``ModelService`` — sessions, credit
leases and usage counters — with REST). ``ServerLive``, ``ServerReady`` and ``ServerMetadata``
are open; the model RPCs need ``x-api-key`` or ``authorization: Bearer …`` metadata, counted
against the caller's rate limit as REST requests are. ``model_name`` is the model id or the
caller's model name; models have one version, ``1``.

Tensors come typed (``contents``) or raw (``raw_input_contents``, as ``tritonclient.grpc``
sends them); the answer uses the same form as the request (FP16 outputs always raw). Messages
are protobuf (upb) classes from ``messages`` (fast), wire-identical to the betterproto ones
in ``generated`` (kept for Python clients).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpclib.const
import numpy as np
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from domain.errors import DomainError
from domain.models import ModelInputError, ModelNotFoundError, ModelRecord
from domain.usage import Caller
from infrastructure.db.setup import database_answers
from infrastructure.identity.auth import Principal
from infrastructure.models import tensors
from interfaces.grpc.auth import authenticate, peer_of
from interfaces.grpc.errors import to_grpc
from interfaces.grpc_inference import messages as pb

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger("aiserve.grpc.inference")
SERVICE = "inference.GRPCInferenceService"
OPEN = frozenset({"ServerLive", "ServerReady", "ServerMetadata"})
VERSION = "1"
PLATFORM = "onnxruntime_onnx"
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
CALLER: ContextVar[Principal] = ContextVar("oip_grpc_caller")
USAGE_CALLER: ContextVar[Caller] = ContextVar("oip_grpc_usage_caller")  # for usage sessions
Handler = Callable[[Any], Awaitable[None]]


def _header(stream: Any, name: str) -> str | None:
    value = stream.metadata.get(name) if stream.metadata else None
    return value if isinstance(value, str) else None


class InferenceService:
    """The OIP v2 RPCs over the container's ``ModelService`` (a grpclib servable)."""

    def __init__(self, container: Container) -> None:
        self.c = container
        self.models = container.model_service()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        rpcs: dict[str, tuple[Callable[[Any], Awaitable[Any]], Any, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (
                self.server_metadata,
                pb.ServerMetadataRequest,
                pb.ServerMetadataResponse,
            ),
            "ModelMetadata": (
                self.model_metadata,
                pb.ModelMetadataRequest,
                pb.ModelMetadataResponse,
            ),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        return {
            f"/{SERVICE}/{name}": grpclib.const.Handler(
                self._guard(name, method),
                grpclib.const.Cardinality.UNARY_UNARY,
                request_type,
                reply_type,
            )
            for name, (method, request_type, reply_type) in rpcs.items()
        }

    def _guard(self, name: str, method: Callable[[Any], Awaitable[Any]]) -> Handler:
        """One unary call: authenticate (but the open RPCs), run, map errors to statuses."""

        async def handle(stream: Any) -> None:
            request = await stream.recv_message()
            try:
                if name in OPEN:
                    reply = await method(request)
                else:
                    principal = await authenticate(
                        self.c,
                        _header(stream, "x-api-key"),
                        _header(stream, "authorization"),
                        peer_of(stream),
                    )
                    token = CALLER.set(principal)
                    agent = str(getattr(stream, "user_agent", "") or "")
                    usage = USAGE_CALLER.set(principal.caller(peer_of(stream), agent))
                    try:
                        reply = await method(request)
                    finally:
                        USAGE_CALLER.reset(usage)
                        CALLER.reset(token)
            except (GRPCError, StreamTerminatedError, asyncio.CancelledError):
                raise
            except DomainError as exc:
                raise to_grpc(exc) from None
            except Exception:
                log.exception("gRPC %s failed", name)
                raise GRPCError(Status.INTERNAL, "Internal server error") from None
            await stream.send_message(reply)

        return handle

    # ------------------------------------------------------------------ server

    async def server_live(self, request: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: Any) -> Any:
        def ping() -> None:
            database_answers(self.c.db)

        try:
            await asyncio.to_thread(ping)
        except Exception:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def server_metadata(self, request: Any) -> Any:
        from interfaces.http.app import VERSION as APP_VERSION

        return pb.ServerMetadataResponse(
            name="gpuproxy", version=APP_VERSION, extensions=["binary_tensor_data"]
        )

    # ------------------------------------------------------------------ models

    async def _model(self, name: str, version: str) -> ModelRecord:
        if version not in ("", VERSION):
            raise ModelNotFoundError(f"models have one version, {VERSION}", version=version)
        return await self.models.find(CALLER.get().user_id, name)

    async def model_ready(self, request: Any) -> Any:
        record = await self._model(request.name, request.version)
        return pb.ModelReadyResponse(ready=record.status == "ready")

    async def model_metadata(self, request: Any) -> Any:
        record = await self._model(request.name, request.version)
        reply = pb.ModelMetadataResponse(name=request.name, versions=[VERSION], platform=PLATFORM)
        for field, specs in (
            ("inputs", record.signature.inputs),
            ("outputs", record.signature.outputs),
        ):
            for spec in specs:
                getattr(reply, field).add(name=spec.name, datatype=spec.datatype, shape=spec.shape)
        return reply

    async def model_infer(self, request: Any) -> Any:
        record = await self._model(request.model_name, request.model_version)
        raw = len(request.raw_input_contents) > 0
        inputs = _inputs(request, record)
        wanted = tuple(o.name for o in request.outputs)
        _, result = await self.models.predict(
            CALLER.get().user_id,
            request.model_name,
            inputs,
            outputs=wanted,
            strict=True,
            caller=USAGE_CALLER.get(),
        )
        datatypes = {s.name: s.datatype for s in record.signature.outputs}
        reply = pb.ModelInferResponse(
            model_name=request.model_name, model_version=VERSION, id=request.id
        )
        use_raw = raw or "FP16" in datatypes.values()
        for name, array in result.outputs.items():
            datatype = datatypes.get(name) or tensors.oip_type_of(array)
            tensor = reply.outputs.add(name=name, datatype=datatype, shape=array.shape)
            if use_raw:
                reply.raw_output_contents.append(tensors.raw_bytes(array))
            else:
                _fill(tensor.contents, datatype, array)
        return reply


def _inputs(request: Any, record: ModelRecord) -> dict[str, np.ndarray]:
    signature = record.signature
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise ModelInputError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise ModelInputError(f"input {tensor.name!r} is given twice", input=tensor.name)
        if raw:
            inputs[tensor.name] = tensors.from_raw(
                tensor.name, tensor.datatype, list(tensor.shape), raw[index], signature
            )
            continue
        field = CONTENTS.get(tensor.datatype)
        if field is None:
            raise ModelInputError(
                f"input {tensor.name!r}: {tensor.datatype or 'no datatype'} needs "
                "raw_input_contents (or is not an OIP datatype)",
                input=tensor.name,
            )
        values = list(getattr(tensor.contents, field))
        inputs[tensor.name] = tensors.from_oip(
            tensor.name, tensor.datatype, list(tensor.shape), values, signature
        )
    return inputs


def _fill(contents: Any, datatype: str, array: np.ndarray) -> None:
    flat = array.reshape(-1).tolist()
    if datatype == "BYTES":
        flat = [v if isinstance(v, bytes) else str(v).encode() for v in flat]
    getattr(contents, CONTENTS[datatype]).extend(flat)


__all__ = ["SERVICE", "InferenceService"]
