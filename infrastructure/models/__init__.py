"""Model hosting adapters: storage (local, OCI), conversion in a child process, ONNX Runtime.

``build_model_service`` wires them into the domain's ``ModelService`` for one process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from domain.ports.clock import Clock
    from domain.ports.fee_tally import FeeTally
    from domain.services.ledger import LedgerService
    from domain.services.models import ModelService
    from infrastructure.db.sql import Database
    from infrastructure.settings import Settings

CONVERT_MEMORY_FLOOR = 8 * 1024**3  # address space for a conversion child (torch maps a lot)


def build_model_service(
    settings: Settings,
    db: Database,
    ledger: LedgerService,
    clock: Clock,
    tally: FeeTally | None = None,
) -> ModelService:
    """The process's model service over the configured storage backend; ``tally``: the
    durable fee tally its leases record fees in (with Redis; docs/adr/0029)."""
    from domain.models import UploadLimits
    from domain.services.models import ModelService, ModelServingConfig
    from infrastructure.models.batching import BatchConfig
    from infrastructure.models.catalog import SqlModelCatalog
    from infrastructure.models.converter import SubprocessConverter
    from infrastructure.models.engine import OnnxEngine
    from infrastructure.models.storage import open_storage

    storage = open_storage(settings)
    batching = (
        BatchConfig(max_rows=settings.models.batch_max_rows, wait_ms=settings.models.batch_wait_ms)
        if settings.models.batching
        else None
    )
    engine = OnnxEngine(
        storage,
        cache_bytes=settings.models.cache_bytes,
        threads=settings.models.inference_threads,
        intra_op_threads=settings.models.intra_op_threads,
        execution_provider=settings.models.execution_provider,
        cuda_tf32=settings.models.cuda_tf32,
        batching=batching,
    )
    converter = SubprocessConverter(
        timeout=settings.models.convert_timeout,
        memory_bytes=max(CONVERT_MEMORY_FLOOR, 4 * settings.models.max_upload_bytes),
    )
    config = ModelServingConfig(
        limits=UploadLimits(
            total_bytes=settings.models.storage_quota_bytes,
            file_bytes=settings.models.max_upload_bytes,
            per_hour=settings.models.uploads_per_hour,
            per_day=settings.models.uploads_per_day,
        ),
        allow_pickle=settings.models.allow_pickle,
        price=settings.models.predict_price,
        lease_amount=settings.models.lease_amount,
        flush_interval=settings.models.usage_flush_interval,
        session_idle_minutes=settings.proxy.usage_session_idle_minutes,
    )
    return ModelService(
        SqlModelCatalog(db),
        storage,
        converter,
        engine,
        ledger=ledger,
        save_usage=ledger.record_usage,
        config=config,
        clock=clock,
        tally=tally,
    )
