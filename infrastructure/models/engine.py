"""ONNX Runtime inference: a memory-bounded session cache, a thread pool, optional batching.

- Sessions are loaded on first use (in the pool: never on the event loop), at most one load
  per model at a time, and kept in an LRU bounded by ``MODEL_CACHE_BYTES`` (each weighed by
  its ONNX file size; the newest session stays even if alone it is larger).
- The CUDA execution provider is asked for when ONNX Runtime has it (``onnxruntime-gpu``)
  and ``MODEL_EXECUTION_PROVIDER=auto``, in full float32 unless ``MODEL_CUDA_TF32`` is on.
  ``used_gpu`` is true only when the session really runs on CUDA (ONNX Runtime falls back
  to CPU when CUDA cannot start) and the graph has operators with CUDA kernels
  (``ai.onnx.ml`` ones, as scikit-learn models use, have none).
- Runs go to a thread pool (ONNX Runtime releases the GIL), except those a model has shown
  to be tiny: once a CPU session's measured run time per row (an EWMA over its runs in the
  pool) times the request's rows is under ``INLINE_BUDGET_S`` (50 µs), the run happens on
  the event loop, where it blocks the loop for less than the ~100 µs the hop would cost.
  Every inline run is measured too, so a model that gets slower goes back to the pool. With
  batching on, concurrent requests for one model are stacked along the batch axis
  (``batching.Batcher``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from domain.models import ModelRecord, ModelStorage, Prediction, StorageUnavailableError
from infrastructure.models import tensors
from infrastructure.models.batching import BatchConfig, Batcher
from infrastructure.models.tensors import Prepared

if TYPE_CHECKING:
    from collections.abc import Mapping

log = logging.getLogger(__name__)
RUNTIME = "onnxruntime"
INLINE_BUDGET_S = 50e-6  # a run expected to take less than this runs on the event loop
INLINE_AFTER = 8  # runs measured in the pool before a session may run inline
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass
class Session:
    """A loaded model."""

    model_id: str
    session: Any  # onnxruntime.InferenceSession
    size: int
    used_gpu: bool
    output_names: tuple[str, ...]
    on_cpu: bool = True
    per_row: float = 0.0  # EWMA of the run time per row, seconds
    measured: int = 0

    def run(self, names: Sequence[str], feeds: dict[str, Any]) -> list[Any]:
        result: list[Any] = self.session.run(list(names), feeds)
        return result

    def timed_run(self, names: Sequence[str], feeds: dict[str, Any], rows: int) -> list[Any]:
        started = time.perf_counter()
        result = self.run(names, feeds)
        sample = (time.perf_counter() - started) / max(rows, 1)
        # The first run warms the session up (several times slower): not counted. Racy
        # between pool threads, harmlessly: it only steers where the next run goes.
        if self.measured == 1:
            self.per_row = sample
        elif self.measured > 1:
            self.per_row = 0.7 * self.per_row + 0.3 * sample
        self.measured += 1
        return result

    def inline(self, rows: int) -> bool:
        """True when a run of ``rows`` rows is known to cost less than a thread hop."""
        return (
            self.on_cpu
            and self.measured >= INLINE_AFTER
            and self.per_row * max(rows, 1) < INLINE_BUDGET_S
        )


def providers(mode: str, *, tf32: bool = False) -> list[str | tuple[str, dict[str, str]]]:
    """Execution providers to ask for: CUDA first when present (``onnxruntime-gpu``).

    ONNX Runtime's CUDA provider multiplies float32 matrices in TF32 by default on Ampere and
    newer GPUs (a 10-bit mantissa: on an H100, errors of 1e-3 to 8e-3 where float32 gave
    2e-5; docs/performance.md); here it answers in full float32 unless ``tf32``
    (``MODEL_CUDA_TF32``) allows the faster, rougher mode.
    """
    import onnxruntime as ort

    if mode != "auto" or CUDA not in ort.get_available_providers():
        return [CPU]
    preload_cuda()
    return [(CUDA, {"use_tf32": "1" if tf32 else "0"}), CPU]


@functools.cache
def preload_cuda() -> None:
    """Load the CUDA and cuDNN libraries from the ``nvidia-*`` pip packages, once.

    ONNX Runtime's CUDA provider finds them only on the loader's path; ``onnxruntime-gpu``
    installed with its ``cuda,cudnn`` extras puts them beside it, where ``preload_dlls``
    looks. What it prints (libraries it could not load) goes to the log. Without the
    libraries the session falls back to CPU, and ``used_gpu`` says so.
    """
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if preload is None:  # onnxruntime-gpu < 1.21
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception:  # a broken CUDA install must not stop model serving
        log.warning("could not preload the CUDA libraries", exc_info=True)
    for line in printed.getvalue().splitlines():
        if line.strip():
            log.warning("onnxruntime preload: %s", line.strip())


class OnnxEngine:
    runtime = RUNTIME

    def __init__(
        self,
        storage: ModelStorage,
        *,
        cache_bytes: int,
        threads: int = 0,
        intra_op_threads: int = 1,
        execution_provider: str = "auto",
        cuda_tf32: bool = False,
        batching: BatchConfig | None = None,
    ) -> None:
        self.storage = storage
        self.cache_bytes = cache_bytes
        self.intra_op_threads = intra_op_threads
        self.execution_provider = execution_provider
        self.cuda_tf32 = cuda_tf32
        workers = threads or min(8, os.cpu_count() or 1)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnx")
        self.batcher = Batcher(batching, self._run_sync) if batching else None
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Session]] = {}

    # ------------------------------------------------------------------ sessions

    def _load(self, record: ModelRecord) -> Session:
        import onnxruntime as ort

        try:
            path = self.storage.local_path(record.storage_key)
        except FileNotFoundError:
            log.error(
                "model %s: its stored file %s is missing", record.model_id, record.storage_key
            )
            raise StorageUnavailableError("the model's stored file is missing") from None
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        if record.sha256 and digest.hexdigest() != record.sha256:
            log.error("model %s: stored file does not match its sha256", record.model_id)
            raise StorageUnavailableError("the model's stored file is damaged")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(path), options, providers=providers(self.execution_provider, tf32=self.cuda_tf32)
        )
        on_cuda = session.get_providers()[0] == CUDA
        return Session(
            record.model_id,
            session,
            max(record.stored_bytes, 1),
            used_gpu=on_cuda and record.signature.gpu_capable,
            output_names=tuple(o.name for o in session.get_outputs()),
            on_cpu=not on_cuda,
        )

    async def session(self, record: ModelRecord) -> Session:
        found = self._sessions.get(record.model_id)
        if found is not None:
            self._sessions.move_to_end(record.model_id)
            return found
        loading = self._loading.get(record.model_id)
        if loading is None:
            loop = asyncio.get_running_loop()
            loading = asyncio.ensure_future(loop.run_in_executor(self.executor, self._load, record))
            self._loading[record.model_id] = loading
            loading.add_done_callback(lambda f: self._loaded(record.model_id, f))
        return await asyncio.shield(loading)

    def _loaded(self, model_id: str, future: asyncio.Future[Session]) -> None:
        self._loading.pop(model_id, None)
        if future.cancelled() or future.exception() is not None:
            return
        self._sessions[model_id] = future.result()
        self._trim()

    def _trim(self) -> None:
        total = sum(s.size for s in self._sessions.values())
        while total > self.cache_bytes and len(self._sessions) > 1:
            model_id, gone = self._sessions.popitem(last=False)
            total -= gone.size
            if self.batcher is not None:
                self.batcher.forget(model_id)
            log.info("model %s: session evicted from the cache", model_id)

    def evict(self, model_id: str) -> None:
        self._sessions.pop(model_id, None)
        if self.batcher is not None:
            self.batcher.forget(model_id)

    def cached(self) -> dict[str, int]:
        """Model id → weight of each cached session (LRU order)."""
        return {k: v.size for k, v in self._sessions.items()}

    # ------------------------------------------------------------------ running

    def prepare(
        self, record: ModelRecord, inputs: Mapping[str, Any], *, strict: bool = False
    ) -> Prepared:
        return tensors.prepare(record.signature, inputs, strict=strict)

    @staticmethod
    def _run_sync(session: Session, names: Sequence[str], feeds: dict[str, Any]) -> list[Any]:
        return session.run(names, feeds)

    @staticmethod
    def _run_timed(
        session: Session, names: Sequence[str], feeds: dict[str, Any], rows: int
    ) -> list[Any]:
        return session.timed_run(names, feeds, rows)

    async def run(
        self, record: ModelRecord, prepared: Any, outputs: Sequence[str] = ()
    ) -> Prediction:
        started = time.perf_counter()
        session = await self.session(record)
        names = tuple(outputs) or session.output_names
        if self.batcher is not None and self.batcher.can_batch(record.signature, prepared):
            values = await self.batcher.submit(session, names, prepared, self.executor)
        elif session.inline(prepared.rows):
            values = session.timed_run(names, prepared.feeds, prepared.rows)
        else:
            loop = asyncio.get_running_loop()
            values = await loop.run_in_executor(
                self.executor, self._run_timed, session, names, prepared.feeds, prepared.rows
            )
        return Prediction(
            outputs=dict(zip(names, values, strict=True)),
            latency_ms=(time.perf_counter() - started) * 1e3,
            runtime=RUNTIME,
            used_gpu=session.used_gpu,
            rows=None if prepared.row else prepared.rows,
        )

    async def aclose(self) -> None:
        if self.batcher is not None:
            await self.batcher.aclose()
        self._sessions.clear()
        with contextlib.suppress(Exception):
            self.executor.shutdown(wait=False, cancel_futures=True)
