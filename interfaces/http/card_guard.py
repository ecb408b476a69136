"""Headers the service stores (``Idempotency-Key`` in payments, holds and rentals; the session's
``User-Agent``): one holding a card number is a 400 naming the header, for every route.

Body fields are checked by ``schemas.Body``; ``X-Preferred-Payment`` by ``payment_input``
(where a Stripe test card number is mapped to its token and never kept).
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from domain.pan import refuse_pan

STORED_HEADERS = ("Idempotency-Key", "User-Agent")


async def refuse_card_numbers(request: Request[Any, Any, Any]) -> None:
    """Litestar ``before_request`` hook; a coroutine, so Litestar runs it in the event loop
    (a plain function is sent to a worker thread: a thread hop on every request)."""
    for name in STORED_HEADERS:
        value = request.headers.get(name)
        if value:
            refuse_pan(value, name)
