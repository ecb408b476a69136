"""The baseline for the HTTP benchmark: a bare Litestar route, served the same way."""

from __future__ import annotations

from litestar import Litestar, get


@get("/bare")
async def bare() -> dict[str, str]:
    return {"credits_remaining": "0.00"}


app = Litestar(route_handlers=[bare], logging_config=None)
