"""Hosted models: records, signatures, upload quotas, errors and the ports model serving uses.

Models are identity-like records (a table, not an aggregate): nothing about money is decided
from them. Every rule about what may be uploaded, by whom and how much lives here; storage,
conversion and inference sit behind the ports at the bottom (adapters in
``infrastructure/models``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from domain.errors import DomainError

FORMATS = ("onnx", "pytorch", "sklearn")
EXTENSIONS = {
    ".onnx": "onnx",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".joblib": "sklearn",
}
PICKLE_FORMATS = frozenset({"sklearn"})  # loading them runs code from the file
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
MAX_DIMS = 8
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# ------------------------------------------------------------------------ errors


class ModelNotFoundError(DomainError):
    """No such model, or not the caller's (the same answer: ids are not disclosed)."""

    status = 404
    title = "Model not found"


class InvalidModelError(DomainError):
    """The uploaded file is not a model we can serve (corrupt, wrong format, a state dict)."""

    status = 400
    title = "Invalid model"


class ModelInputError(DomainError):
    """A prediction's input does not match the model's signature."""

    status = 400
    title = "Invalid model input"


class PickleNotAllowedError(DomainError):
    """Pickled models run code when loaded: only admins may upload them unless allowed."""

    status = 403
    title = "Pickle uploads not allowed"


class UploadFormError(DomainError):
    """A field of the upload form is missing or malformed."""

    status = 400
    title = "Invalid upload"


class ModelNameTakenError(DomainError):
    status = 409
    title = "Model name in use"


class QuotaExceededError(DomainError):
    """An upload limit was reached: 413 for sizes, 429 for upload counts."""

    title = "Upload quota exceeded"

    def __init__(self, message: str, *, status: int, quota: str, limit: int, used: int) -> None:
        super().__init__(message, quota=quota, limit=limit, used=used)
        self.status = status


class StorageUnavailableError(DomainError):
    """The model store (object storage) failed or refused; nothing was kept."""

    status = 503
    title = "Model storage unavailable"


class ConversionUnavailableError(DomainError):
    """The server lacks what converting this format needs (e.g. torch is not installed)."""

    status = 501
    title = "Conversion unavailable"


# ------------------------------------------------------------------ signatures


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: OIP datatype (``FP32``, ``INT64``, …) and shape (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name}: {self.datatype}[{dims}]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True)
class Signature:
    """What a model takes and gives; ``op_domains``: the ONNX operator sets its graph uses."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_domains: tuple[str, ...] = ()

    def describe(self) -> str:
        ins = "; ".join(s.describe() for s in self.inputs)
        outs = "; ".join(s.describe() for s in self.outputs)
        return f"inputs ({ins}) -> outputs ({outs})"

    @property
    def gpu_capable(self) -> bool:
        """False when every operator is from ``ai.onnx.ml`` (no CUDA kernels: runs on CPU)."""
        return any(d in {"", "ai.onnx"} for d in self.op_domains) or not self.op_domains

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "op_domains": list(self.op_domains),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_json(s) for s in data["inputs"]),
            tuple(TensorSpec.from_json(s) for s in data["outputs"]),
            tuple(str(d) for d in data.get("op_domains", ())),
        )


# ---------------------------------------------------------------------- records


@dataclass(frozen=True)
class ModelRecord:
    model_id: str
    owner: str
    name: str
    format: str  # what was uploaded: onnx | pytorch | sklearn (always served as ONNX)
    filename: str
    upload_bytes: int
    stored_bytes: int
    storage_key: str
    backend: str
    sha256: str
    signature: Signature
    created_at: datetime
    status: str = "ready"

    @property
    def converted_to(self) -> str | None:
        return None if self.format == "onnx" else "onnx"


@dataclass(frozen=True)
class ConvertOptions:
    """What conversion may need: TorchScript example input shape, scikit-learn feature count."""

    input_shape: tuple[int, ...] | None = None
    n_features: int | None = None


@dataclass(frozen=True)
class UploadForm:
    """The non-file fields of an upload, checked."""

    name: str
    format: str
    filename: str
    options: ConvertOptions = field(default_factory=ConvertOptions)


def check_name(name: str) -> str:
    name = name.strip()
    if not NAME.match(name):
        raise UploadFormError(
            "name must be 1-128 characters: letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            field="name",
        )
    return name


def format_of(filename: str, declared: str | None) -> str:
    """The model format from the declared ``format`` and the file extension (they must agree)."""
    suffix = Path(filename).suffix.lower()
    by_extension = EXTENSIONS.get(suffix)
    if declared:
        fmt = declared.strip().lower()
        if fmt not in FORMATS:
            raise UploadFormError(
                f"format must be one of {', '.join(FORMATS)} (TensorFlow: export to ONNX with "
                "tf2onnx first)",
                field="format",
            )
        if by_extension is not None and by_extension != fmt:
            raise UploadFormError(
                f"file extension {suffix} does not match format {fmt}", field="format"
            )
        return fmt
    if by_extension is None:
        known = ", ".join(sorted(EXTENSIONS))
        raise UploadFormError(
            f"cannot tell the format of {filename!r}: use one of {known} or send format",
            field="format",
        )
    return by_extension


def parse_shape(raw: str) -> tuple[int, ...]:
    """``"1,4"``, ``"[1, 3, 224, 224]"`` or ``"1x4"`` → (1, 4); every dimension 1..65536."""
    text = raw.strip().strip("[]()")
    parts = [p for p in re.split(r"[,x\s]+", text) if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UploadFormError(
            f"input_shape {raw!r} is not a list of integers", field="input_shape"
        ) from None
    if not 1 <= len(dims) <= MAX_DIMS or any(not 1 <= d <= 65536 for d in dims):
        raise UploadFormError(
            f"input_shape must have 1 to {MAX_DIMS} dimensions, each 1..65536",
            field="input_shape",
        )
    return dims


def parse_features(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise UploadFormError("n_features must be an integer", field="n_features") from None
    if not 1 <= value <= 1_000_000:
        raise UploadFormError("n_features must be between 1 and 1000000", field="n_features")
    return value


def may_upload(fmt: str, *, is_admin: bool, allow_pickle: bool) -> None:
    if fmt in PICKLE_FORMATS and not (is_admin or allow_pickle):
        raise PickleNotAllowedError(
            "scikit-learn pickles (.pkl, .joblib) run code when loaded: only admins may "
            "upload them unless the server sets ALLOW_PICKLE_MODELS=true; export the model "
            "to ONNX (skl2onnx) and upload the .onnx instead",
            field="model",
        )


# ----------------------------------------------------------------------- quotas


@dataclass(frozen=True)
class QuotaUsage:
    """A user's standing, read under the per-user lock: bytes held, uploads started."""

    bytes_used: int
    uploads_last_hour: int
    uploads_last_day: int


@dataclass(frozen=True)
class UploadLimits:
    """Per-user limits (seed defaults: 100 GB, 10 GB per file, 50 per hour, 500 per day)."""

    total_bytes: int = 100 * 10**9
    file_bytes: int = 10 * 10**9
    per_hour: int = 50
    per_day: int = 500

    def admit(self, usage: QuotaUsage) -> int:
        """Raise if a new upload may not start; else the bytes it may still store."""
        if usage.uploads_last_hour >= self.per_hour:
            raise QuotaExceededError(
                f"upload limit reached: {self.per_hour} uploads per hour",
                status=429,
                quota="uploads_per_hour",
                limit=self.per_hour,
                used=usage.uploads_last_hour,
            )
        if usage.uploads_last_day >= self.per_day:
            raise QuotaExceededError(
                f"upload limit reached: {self.per_day} uploads per day",
                status=429,
                quota="uploads_per_day",
                limit=self.per_day,
                used=usage.uploads_last_day,
            )
        room = self.total_bytes - usage.bytes_used
        if room <= 0:
            raise self.storage_full(usage.bytes_used)
        return room

    def storage_full(self, used: int) -> QuotaExceededError:
        return QuotaExceededError(
            f"storage quota exceeded: {used} of {self.total_bytes} bytes used; delete models "
            "to make room",
            status=413,
            quota="storage_bytes",
            limit=self.total_bytes,
            used=used,
        )

    def file_too_large(self, received: int) -> QuotaExceededError:
        return QuotaExceededError(
            f"model file is larger than the {self.file_bytes}-byte limit",
            status=413,
            quota="file_bytes",
            limit=self.file_bytes,
            used=received,
        )


@dataclass(frozen=True)
class UploadTicket:
    """An admitted upload: its reservation row and the most bytes its file may have."""

    upload_id: str
    owner: str
    max_bytes: int
    limited_by_quota: bool  # max_bytes is the storage room left, not the file-size limit


# ------------------------------------------------------------------------- ports


class ModelCatalog(Protocol):
    """The model table and the upload counters (each method one transaction)."""

    def reserve_upload(
        self,
        owner: str,
        upload_id: str,
        now: datetime,
        admit: Callable[[QuotaUsage], int],
        wanted: int,
    ) -> int:
        """Lock the user's quota row, ``admit(usage)``, record the upload holding
        ``min(wanted, room)`` bytes; return that reservation."""
        ...

    def register(
        self, record: ModelRecord, upload_id: str, check_room: Callable[[int], None]
    ) -> None:
        """Add the model in place of the reservation; ``check_room(bytes used after)``."""
        ...

    def cancel_upload(self, upload_id: str) -> None: ...
    def get(self, model_id: str) -> ModelRecord | None: ...
    def by_name(self, owner: str, name: str) -> ModelRecord | None: ...
    def list_for(self, owner: str) -> list[ModelRecord]: ...
    def delete(self, owner: str, model_id: str) -> ModelRecord | None: ...
    def usage(self, owner: str, now: datetime) -> QuotaUsage: ...


class ModelStorage(Protocol):
    """Where converted models live (local folder or object storage)."""

    name: str

    def put(self, key: str, source: Path) -> int:
        """Store the file under ``key`` (streamed); return the bytes stored."""
        ...

    def local_path(self, key: str) -> Path:
        """A local file with the object's bytes (downloaded and cached if remote)."""
        ...

    def delete(self, key: str) -> None: ...


class ModelConverter(Protocol):
    def convert(self, fmt: str, source: Path, dest: Path, options: ConvertOptions) -> Signature:
        """Validate ``source`` and write the ONNX model to ``dest``; its signature."""
        ...


@dataclass(frozen=True)
class Prediction:
    outputs: dict[str, Any]  # output name -> array (the engine's type)
    latency_ms: float
    runtime: str
    used_gpu: bool
    rows: int | None  # batch size, None when the request was one unbatched row


class InferenceEngine(Protocol):
    """Runs models: ``prepare`` checks input (sync, cheap), ``run`` computes (off the loop)."""

    def prepare(
        self, record: ModelRecord, inputs: Mapping[str, Any], *, strict: bool = False
    ) -> Any:
        """Check and convert input (``strict``: full shapes only, as OIP requires)."""
        ...

    async def run(
        self, record: ModelRecord, prepared: Any, outputs: Sequence[str] = ()
    ) -> Prediction: ...

    def evict(self, model_id: str) -> None: ...

    async def aclose(self) -> None: ...
