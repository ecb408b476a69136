"""The request class: JSON bodies whose numbers overflow a float still reach validation.

Litestar decodes a JSON body to plain Python values first and converts them to the handler's
type afterwards; msgspec refuses a number out of float range (``1e400``) at that first step
with "Number out of range - at `$[...]`", a 400 that names no field, even where the field is a
``Decimal`` that could hold it. Here such a body is decoded again with those numbers as
``Decimal``: the field's own validation then answers, naming the field. Every other body takes
the normal path, untouched (a float hook on every body would slow large numeric inputs).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException

OVERFLOW = "Number out of range"


def _wide_float(text: str) -> float | Decimal:
    value = float(text)
    return value if math.isfinite(value) else Decimal(text)


_WIDE = msgspec.json.Decoder(float_hook=_wide_float)


class AppRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except SerializationException as exc:
            if OVERFLOW not in str(exc):
                raise
            body = await self.body()
            try:
                return _WIDE.decode(body)
            except msgspec.DecodeError:
                raise exc from None
