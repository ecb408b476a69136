"""Tensors: OIP datatypes, input checks against a signature, and OIP encodings (JSON, raw).

Every check names the model's signature in its error, so a caller can fix the request.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from domain.models import ModelInputError, Signature, TensorSpec

ORT_TO_OIP = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
NUMPY: dict[str, Any] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}
ACCEPTED_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b", "O": "USO"}
MAX_ELEMENTS = 50_000_000


@dataclass(frozen=True)
class Prepared:
    """Checked model input: arrays by input name; ``row``: one unbatched row was sent."""

    feeds: dict[str, np.ndarray]
    row: bool
    rows: int  # the batch size (first dimension), 1 for a row


def oip_datatype(ort_type: str) -> str | None:
    return ORT_TO_OIP.get(ort_type)


def dims(shape: Sequence[Any]) -> tuple[int, ...]:
    """An ONNX Runtime shape (ints, None or symbolic names) with -1 for any size."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _fail(name: str, problem: str, signature: Signature) -> ModelInputError:
    return ModelInputError(
        f"input {name!r}: {problem}; the model expects {signature.describe()}",
        input=name,
        expected=signature.describe(),
    )


def _array(value: Any, spec: TensorSpec, signature: Signature) -> np.ndarray:
    """JSON values (nested lists) as an array of the spec's type, refusing lossy casts."""
    target = np.dtype(NUMPY[spec.datatype])
    try:
        probe = np.asarray(value)
    except (ValueError, TypeError):
        raise _fail(spec.name, "is ragged (rows of different lengths)", signature) from None
    if probe.size > MAX_ELEMENTS:
        raise _fail(spec.name, f"has more than {MAX_ELEMENTS} elements", signature)
    if probe.size == 0 and probe.dtype.kind == "f":
        return probe.astype(target)
    if probe.dtype.kind not in ACCEPTED_KINDS[target.kind]:
        got = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans"}.get(
            probe.dtype.kind, "text or mixed values"
        )
        raise _fail(spec.name, f"got {got} but the model takes {spec.datatype}", signature)
    if target.kind == "O":
        return probe.astype(object)
    array = probe.astype(target)
    if target.kind in "iu" and not np.array_equal(array, probe):
        raise _fail(spec.name, f"a value is out of range for {spec.datatype}", signature)
    return array


def prepare(signature: Signature, inputs: Mapping[str, Any], *, strict: bool) -> Prepared:
    """Check ``inputs`` against the signature; ``strict``: full shapes only (OIP)."""
    expected = {s.name for s in signature.inputs}
    unknown = sorted(set(inputs) - expected)
    if unknown:
        raise _fail(unknown[0], "is not an input of this model", signature)
    feeds: dict[str, np.ndarray] = {}
    promoted: list[bool] = []
    for spec in signature.inputs:
        if spec.name not in inputs:
            raise _fail(spec.name, "is missing", signature)
        value = inputs[spec.name]
        if isinstance(value, np.ndarray):
            if value.dtype != np.dtype(NUMPY[spec.datatype]):
                raise _fail(spec.name, f"is {value.dtype}, not {spec.datatype}", signature)
            array = value
        else:
            array = _array(value, spec, signature)
        rank = len(spec.shape)
        one_row = not strict and rank >= 1 and spec.shape[0] in (-1, 1) and array.ndim == rank - 1
        if one_row:
            array = array[np.newaxis, ...]
        if array.ndim != rank or any(
            d >= 0 and d != a for d, a in zip(spec.shape, array.shape, strict=True)
        ):
            raise _fail(spec.name, f"has shape {list(array.shape)}", signature)
        feeds[spec.name] = array
        promoted.append(one_row)
    if any(promoted) and not all(promoted):
        raise ModelInputError(
            "send every input as one row or every input as a batch, not a mix; the model "
            f"expects {signature.describe()}",
            expected=signature.describe(),
        )
    first = next(iter(feeds.values()), None)
    rows = int(first.shape[0]) if first is not None and first.ndim else 1
    return Prepared(feeds, row=bool(promoted) and all(promoted), rows=rows)


def to_json(array: np.ndarray, *, row: bool) -> Any:
    """An output as JSON values (bytes decoded as UTF-8); a row's leading 1 removed."""
    if row and array.ndim >= 1 and array.shape[0] == 1:
        array = array[0]
    if array.dtype.kind in "OSU":
        return _strings(array.tolist())
    return array.tolist()


def _strings(value: Any) -> Any:
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


# ----------------------------------------------------------------- OIP tensors


def from_oip(
    name: str, datatype: str, shape: Sequence[int], data: Any, signature: Signature
) -> np.ndarray:
    """One OIP input tensor (JSON ``data``, flat or nested) as an array of its shape."""
    spec = next((s for s in signature.inputs if s.name == name), None)
    if spec is None:
        raise _fail(name, "is not an input of this model", signature)
    _check_datatype(spec, datatype, signature)
    shape = _check_shape(spec, shape, signature)
    array = _array(data, spec, signature).reshape(-1)
    if array.size != int(np.prod(shape)):
        raise _fail(name, f"has {array.size} values, shape {list(shape)} needs another", signature)
    return array.reshape(shape)


def from_raw(
    name: str, datatype: str, shape: Sequence[int], raw: bytes, signature: Signature
) -> np.ndarray:
    """One OIP input tensor from raw bytes (little-endian, row-major; BYTES length-prefixed)."""
    spec = next((s for s in signature.inputs if s.name == name), None)
    if spec is None:
        raise _fail(name, "is not an input of this model", signature)
    _check_datatype(spec, datatype, signature)
    shape = _check_shape(spec, shape, signature)
    count = int(np.prod(shape))
    if datatype == "BYTES":
        items = _unpack_bytes(raw, name, signature)
        if len(items) != count:
            raise _fail(
                name, f"has {len(items)} strings, shape {list(shape)} needs {count}", signature
            )
        return np.array(items, dtype=object).reshape(shape)
    dtype = np.dtype(NUMPY[datatype]).newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise _fail(
            name,
            f"has {len(raw)} bytes, shape {list(shape)} of {datatype} needs "
            f"{count * dtype.itemsize}",
            signature,
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _check_datatype(spec: TensorSpec, datatype: str, signature: Signature) -> None:
    if datatype != spec.datatype:
        raise _fail(spec.name, f"datatype {datatype!r} is not {spec.datatype}", signature)


def _check_shape(spec: TensorSpec, shape: Sequence[int], signature: Signature) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape) or int(np.prod(shape)) > MAX_ELEMENTS:
        raise _fail(spec.name, f"shape {list(shape)} is not valid", signature)
    if len(shape) != len(spec.shape) or any(
        d >= 0 and d != a for d, a in zip(spec.shape, shape, strict=True)
    ):
        raise _fail(spec.name, f"has shape {list(shape)}", signature)
    return shape


def _unpack_bytes(raw: bytes, name: str, signature: Signature) -> list[bytes]:
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _fail(name, "BYTES data is truncated", signature)
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _fail(name, "BYTES data is truncated", signature)
        items.append(raw[offset : offset + length])
        offset += length
    return items


def raw_bytes(array: np.ndarray) -> bytes:
    """An output as OIP raw bytes."""
    if array.dtype.kind in "OSU":
        parts = []
        for item in array.reshape(-1).tolist():
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def oip_type_of(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    for name, kind in NUMPY.items():
        if name != "BYTES" and np.dtype(kind) == array.dtype:
            return name
    raise ValueError(f"no OIP datatype for {array.dtype}")


def flat_json(array: np.ndarray) -> list[Any]:
    """An output's values, flattened row-major, for OIP JSON ``data``."""
    values = array.reshape(-1).tolist()
    return _strings(values) if array.dtype.kind in "OSU" else values
