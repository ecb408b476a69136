"""A prediction's ``input`` as the model reads it, for every door (REST, WebSocket)."""

from __future__ import annotations

from typing import Any

from domain.models import ModelInputError, ModelRecord


def inputs_by_name(record: ModelRecord, value: Any) -> dict[str, Any]:
    """``input`` as a mapping by input name: a bare value feeds a single-input model."""
    names = [s.name for s in record.signature.inputs]
    if isinstance(value, dict):
        return value
    if len(names) == 1:
        return {names[0]: value}
    raise ModelInputError(
        f"this model has {len(names)} inputs: send input as an object keyed by "
        f"{', '.join(names)}; the model expects {record.signature.describe()}",
        expected=record.signature.describe(),
    )
