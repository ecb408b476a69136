"""Model hosting use cases: upload (quota, convert, store, register), registry, predictions.

Uploads: ``begin_upload`` admits the upload under the user's quota lock and reserves bytes;
the interface streams the file to a staging file no larger than the ticket allows;
``complete_upload`` converts, stores and registers it (or undoes everything). Predictions:
input checked first (a bad one costs nothing), then the optional per-prediction price is paid
from a credit lease (``ProxyLeases``, as proxy fees are: no event-store write per request),
then the engine runs it off the event loop. Counts are flushed every few seconds as
``ProxyUsage`` events with the model id as ``instance_id`` and ``provider="model"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain.clocks import system_clock
from domain.models import (
    ConvertOptions,
    InferenceEngine,
    ModelCatalog,
    ModelConverter,
    ModelInputError,
    ModelNameTakenError,
    ModelNotFoundError,
    ModelRecord,
    ModelStorage,
    Prediction,
    UploadForm,
    UploadLimits,
    UploadTicket,
    may_upload,
)
from domain.ports.clock import Clock
from domain.ports.fee_tally import FeeTally
from domain.services.ledger import LedgerService
from domain.services.proxy_leases import ProxyLeases, unique_process_id
from domain.usage import Caller, ProxyUsage, SessionTally

log = logging.getLogger(__name__)
USAGE_PROVIDER = "model"
SAFE_OWNER = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


@dataclass(frozen=True)
class ModelServingConfig:
    limits: UploadLimits = field(default_factory=UploadLimits)
    allow_pickle: bool = False
    price: int = 0  # micro-USD per prediction
    lease_amount: int = 1_000_000
    flush_interval: float = 10.0
    session_idle_minutes: int = 30  # recorded with each flush's usage-session rows
    record_ttl: float = 2.0  # seconds a looked-up record is reused (deletes elsewhere: then)


@dataclass
class _Count:
    owner: str
    requests: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0


class ModelUsage:
    """Prediction counters per model since the last flush (one event loop, no locks)."""

    def __init__(self) -> None:
        self._counts: dict[str, _Count] = {}

    def count(self, record: ModelRecord, *, ok: bool, latency_ms: float) -> None:
        entry = self._counts.get(record.model_id)
        if entry is None:
            entry = self._counts[record.model_id] = _Count(record.owner)
        entry.requests += 1
        entry.errors += 0 if ok else 1
        entry.latency_ms_sum += latency_ms

    def drain(self) -> list[dict[str, Any]]:
        counts, self._counts = self._counts, {}
        return [
            {
                "instance_id": model_id,
                "owner": c.owner,
                "provider": USAGE_PROVIDER,
                "requests": c.requests,
                "errors": c.errors,
                "latency_ms_sum": round(c.latency_ms_sum),
            }
            for model_id, c in counts.items()
        ]


def storage_key(owner: str, model_id: str) -> str:
    folder = owner if SAFE_OWNER.match(owner) else hashlib.sha256(owner.encode()).hexdigest()[:32]
    return f"models/{folder}/{model_id}.onnx"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ModelService:
    """One per process; ``find``/``predict`` and the background job run on one event loop."""

    def __init__(
        self,
        catalog: ModelCatalog,
        storage: ModelStorage,
        converter: ModelConverter,
        engine: InferenceEngine,
        *,
        ledger: LedgerService,
        save_usage: Callable[[ProxyUsage], Any],
        config: ModelServingConfig,
        clock: Clock = system_clock,
        tally: FeeTally | None = None,
    ) -> None:
        self.catalog = catalog
        self.storage = storage
        self.converter = converter
        self.engine = engine
        self.config = config
        self.limits = config.limits
        self.clock = clock
        self.process_id = unique_process_id("models")
        self.leases = ProxyLeases(
            ledger,
            price=config.price,
            lease_amount=max(config.lease_amount, config.price),
            process_id=self.process_id,
            clock=clock,
            tally=tally,  # with Redis: a killed process's fees are recovered (ADR 0029)
        )
        self.usage = ModelUsage()
        self.sessions = SessionTally()
        self._save_usage = save_usage
        self._records: dict[tuple[str, str], tuple[float, ModelRecord]] = {}
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ uploads

    def begin_upload(self, owner: str, declared_bytes: int | None) -> UploadTicket:
        """Admit an upload (counts and bytes, under the user's lock) and reserve its bytes."""
        upload_id = str(uuid.uuid4())
        wanted = self.limits.file_bytes
        if declared_bytes is not None and declared_bytes > 0:
            wanted = min(wanted, declared_bytes)
        reserved = self.catalog.reserve_upload(
            owner, upload_id, self.clock(), self.limits.admit, wanted
        )
        return UploadTicket(upload_id, owner, reserved, limited_by_quota=reserved < wanted)

    def check_file(self, fmt: str, *, is_admin: bool) -> None:
        """Refuse a pickle from a non-admin as soon as its format is known."""
        may_upload(fmt, is_admin=is_admin, allow_pickle=self.config.allow_pickle)

    def too_large(self, ticket: UploadTicket, received: int) -> Exception:
        """The error for a file that outgrew its ticket."""
        if ticket.limited_by_quota and received <= self.limits.file_bytes:
            used = self.catalog.usage(ticket.owner, self.clock()).bytes_used
            return self.limits.storage_full(used - ticket.max_bytes + received)
        return self.limits.file_too_large(received)

    def complete_upload(
        self,
        ticket: UploadTicket,
        staged: Path,
        form: UploadForm,
        *,
        is_admin: bool,
        upload_bytes: int,
    ) -> ModelRecord:
        """Convert, store and register; on any failure nothing is left (reservation, object)."""
        self.check_file(form.format, is_admin=is_admin)
        if self.catalog.by_name(ticket.owner, form.name) is not None:
            raise ModelNameTakenError(
                f"you already have a model named {form.name!r}: delete it or pick another name",
                field="name",
            )
        converted = staged.with_name(f"{ticket.upload_id}.converted.onnx")
        model_id = str(uuid.uuid4())
        key = storage_key(ticket.owner, model_id)
        stored = False
        try:
            signature = self.converter.convert(form.format, staged, converted, form.options)
            sha = file_sha256(converted)
            size = self.storage.put(key, converted)
            stored = True
            record = ModelRecord(
                model_id=model_id,
                owner=ticket.owner,
                name=form.name,
                format=form.format,
                filename=form.filename,
                upload_bytes=upload_bytes,
                stored_bytes=size,
                storage_key=key,
                backend=self.storage.name,
                sha256=sha,
                signature=signature,
                created_at=self.clock(),
            )
            self.catalog.register(record, ticket.upload_id, self._check_room)
            return record
        except BaseException:
            if stored:
                with contextlib.suppress(Exception):
                    self.storage.delete(key)
            self.catalog.cancel_upload(ticket.upload_id)
            raise
        finally:
            converted.unlink(missing_ok=True)

    def abort_upload(self, ticket: UploadTicket) -> None:
        """Drop the reservation (idempotent): a failed upload uses no quota."""
        self.catalog.cancel_upload(ticket.upload_id)

    def _check_room(self, used_after: int) -> None:
        if used_after > self.limits.total_bytes:
            raise self.limits.storage_full(used_after)

    # ----------------------------------------------------------------- registry

    def list_models(self, owner: str) -> list[ModelRecord]:
        return self.catalog.list_for(owner)

    def lookup(self, owner: str, ref: str) -> ModelRecord:
        """The caller's model by id or by name; another user's is 'not found'."""
        record = self.catalog.get(ref) if _looks_like_id(ref) else None
        if record is None or record.owner != owner:
            record = self.catalog.by_name(owner, ref)
        if record is None:
            raise ModelNotFoundError(f"no model {ref!r}", model=ref)
        return record

    def delete(self, owner: str, model_id: str) -> ModelRecord:
        record = self.catalog.delete(owner, model_id)
        if record is None:
            raise ModelNotFoundError(f"no model {model_id!r}", model=model_id)
        try:
            self.storage.delete(record.storage_key)
        except Exception:
            log.exception("model %s: deleting its stored object failed", model_id)
        self.engine.evict(model_id)
        self._records = {k: v for k, v in self._records.items() if v[1].model_id != model_id}
        return record

    def quota(self, owner: str) -> dict[str, int]:
        usage = self.catalog.usage(owner, self.clock())
        return {
            "storage_bytes_used": usage.bytes_used,
            "storage_bytes_limit": self.limits.total_bytes,
            "file_bytes_limit": self.limits.file_bytes,
            "uploads_last_hour": usage.uploads_last_hour,
            "uploads_per_hour": self.limits.per_hour,
            "uploads_last_day": usage.uploads_last_day,
            "uploads_per_day": self.limits.per_day,
        }

    # ------------------------------------------------------------------ serving

    async def find(self, owner: str, ref: str) -> ModelRecord:
        """``lookup`` with a short per-process cache (the hot path reads no table)."""
        key = (owner, ref)
        cached = self._records.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.config.record_ttl:
            return cached[1]
        try:
            record = await asyncio.to_thread(self.lookup, owner, ref)
        except ModelNotFoundError:
            self._records.pop(key, None)
            if _looks_like_id(ref):
                self.engine.evict(ref)  # deleted by another process: drop its session here
            raise
        self._records[key] = (now, record)
        return record

    async def predict(
        self,
        owner: str,
        ref: str,
        inputs: Mapping[str, Any],
        *,
        outputs: Sequence[str] = (),
        strict: bool = False,
        caller: Caller | None = None,
    ) -> tuple[ModelRecord, Prediction]:
        """Check the input, pay (402 without a lease), run; counted into usage (and, given
        ``caller``, into the caller's usage session)."""
        record = await self.find(owner, ref)
        known = [s.name for s in record.signature.outputs]
        unknown = [name for name in outputs if name not in known]
        if unknown:
            raise ModelInputError(
                f"{unknown[0]!r} is not an output of this model; it has {', '.join(known)}",
                output=unknown[0],
            )
        prepared = self.engine.prepare(record, inputs, strict=strict)
        if not self.leases.try_spend(owner):
            await self.leases.spend(owner)
        if caller is not None:
            self.sessions.count(owner, caller, self.leases.price, "model_fees")
        started = time.perf_counter()
        try:
            prediction = await self.engine.run(record, prepared, outputs)
        except BaseException:
            self.usage.count(record, ok=False, latency_ms=(time.perf_counter() - started) * 1e3)
            raise
        self.usage.count(record, ok=True, latency_ms=prediction.latency_ms)
        stored = self.leases.tally_write(owner)
        if stored is not None:  # the fee outlives this process before the answer is sent
            await stored
        return record, prediction

    # --------------------------------------------------------------- background

    def flush(self) -> int:
        """Record the counters since the last flush as one ProxyUsage event; returns rows."""
        rows = self.usage.drain()
        if rows or self.sessions:
            at = self.clock()
            sessions = self.sessions.drain(at)
            idle = self.config.session_idle_minutes
            self._save_usage(
                ProxyUsage(
                    process_id=self.process_id,
                    rows=rows,
                    at=at,
                    sessions=sessions,
                    idle_minutes=idle,
                )
            )
        return len(rows)

    def start(self) -> None:
        """Start flushing usage and settling leases (call on the serving event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run_forever())

    async def run_forever(self) -> None:
        leases = asyncio.create_task(self.leases.run_forever())
        try:
            while True:
                await asyncio.sleep(self.config.flush_interval)
                try:
                    await asyncio.to_thread(self.flush)
                except Exception:
                    log.exception("flushing model usage failed")
        finally:
            leases.cancel()
            await asyncio.gather(leases, return_exceptions=True)

    async def aclose(self) -> None:
        """Stop the job; flush usage, settle and release leases, free sessions."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.to_thread(self.flush)
        except Exception:
            log.exception("final model usage flush failed")
        await self.leases.close()
        if self.leases.tally is not None:
            await self.leases.tally.aclose()
        await self.engine.aclose()


def _looks_like_id(ref: str) -> bool:
    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


__all__ = ["ConvertOptions", "ModelService", "ModelServingConfig", "ModelUsage", "storage_key"]
