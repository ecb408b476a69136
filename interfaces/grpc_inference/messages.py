"""The OIP v2 messages as protobuf (upb) classes, built from the committed descriptor set.

The servicer parses and builds its messages with these: protobuf's C implementation takes
about a microsecond per ``ModelInferRequest`` where the betterproto classes in
``generated/`` take a few hundred (docs/adr/0013-model-serving.md). No generated ``_pb2``
module is involved, so no protoc/runtime version pairing either: the classes come from
``generated/grpc_predict_v2.binpb`` in a private descriptor pool.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor_pb2 import FileDescriptorSet
from google.protobuf.descriptor_pool import DescriptorPool

DESCRIPTOR_SET = files("interfaces.grpc_inference.generated") / "grpc_predict_v2.binpb"


def _pool() -> Any:
    pool = DescriptorPool()
    for proto in FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file:
        pool.Add(proto)
    return pool


POOL = _pool()


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
