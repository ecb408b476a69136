"""Response compression by content negotiation (RFC 9110 §12.5.3, §8.4).

Litestar's ``CompressionMiddleware`` does the encoding (brotli, gzip as the fallback; bodies of
at least ``MINIMUM_SIZE`` bytes, streamed bodies chunk by chunk). This subclass chooses the
coding from ``Accept-Encoding`` with its quality values (``gzip;q=0`` refuses gzip, ``*``
covers the rest; Litestar's own test is a substring match), always sends
``Vary: Accept-Encoding`` (the representation depends on it even when it is sent as it is),
and weakens a strong ``ETag`` on an encoded body (a strong validator names one exact
representation: the identity one).

The proxy routes (``/api/v1/gpu/proxy`` and below) are never compressed: they pass the
upstream's bytes and headers through as they are (the fast lane serves the raw ones outside
Litestar anyway; this covers the Litestar routes). Nor is any answer that already has a
``Content-Encoding``, or an event stream (``text/event-stream``: MCP's streamable HTTP).
"""

from __future__ import annotations

from litestar.config.compression import CompressionConfig
from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.middleware.compression import CompressionMiddleware
from litestar.types import HTTPResponseStartEvent, Message, Receive, Scope, Send

MINIMUM_SIZE = 1024  # bytes: below this an encoding saves too little to pay for itself
PREFERENCE = ("br", "gzip")  # ours, most compact first, among codings of equal quality
EXCLUDE = [
    r"^/api/v1/gpu/proxy(/|$)",  # passthrough: the upstream's bytes, untouched
    r"^/api/v1/billing/credits$",  # always < MINIMUM_SIZE; the fast lane's answer, to the byte
]
STREAMED_TYPES = frozenset({"text/event-stream"})


def accepted_codings(header: str) -> dict[str, float]:
    """``Accept-Encoding`` as coding → quality (``q`` absent is 1; bad ``q`` values are 0)."""
    codings: dict[str, float] = {}
    for item in header.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        if not name:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(1.0, max(0.0, float(value)))
                except ValueError:
                    quality = 0.0
        codings[name.lower()] = quality
    return codings


def choose_coding(header: str | None) -> str | None:
    """Our best coding the client accepts (quality above 0), or None for the identity."""
    if not header:
        return None
    codings = accepted_codings(header)
    wildcard = codings.get("*", 0.0)
    best, best_quality = None, 0.0
    for coding in PREFERENCE:
        quality = codings.get(coding, wildcard)
        if quality > best_quality:
            best, best_quality = coding, quality
    return best


def _vary_and_validators(send: Send) -> Send:
    """Add ``Vary: Accept-Encoding`` once; weaken a strong ETag when the body is encoded."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = MutableScopeHeaders(message)
            vary = [v.strip().lower() for v in ",".join(headers.getall("vary", [])).split(",")]
            if "accept-encoding" not in vary and "*" not in vary:
                headers.extend_header_value("vary", "Accept-Encoding")
            etag = headers.get("etag")
            if headers.get("content-encoding") and etag and not etag.startswith("W/"):
                headers["etag"] = f"W/{etag}"
        await send(message)

    return wrapped


class NegotiatedCompression(CompressionMiddleware):
    """``CompressionMiddleware`` with RFC 9110 negotiation (see the module docstring)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        coding = choose_coding(Headers.from_scope(scope).get("accept-encoding"))
        outer = _vary_and_validators(send)
        if coding is None:
            await self.app(scope, receive, outer)
            return
        compress = self.create_compression_send_wrapper(
            send=outer, compression_encoding=coding, scope=scope
        )
        chosen = compress

        async def choose(message: Message) -> None:
            nonlocal chosen
            if message["type"] == "http.response.start" and _keep_as_is(message):
                chosen = outer
            await chosen(message)

        await self.app(scope, receive, choose)


def _keep_as_is(start: HTTPResponseStartEvent) -> bool:
    """Already encoded (an upstream's bytes), or an event stream (read as it arrives)."""
    headers = MutableScopeHeaders(start)
    media_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
    return bool(headers.get("content-encoding")) or media_type in STREAMED_TYPES


def compression_config() -> CompressionConfig:
    """Brotli where the client takes it, else gzip; bodies under ``MINIMUM_SIZE`` as they are."""
    return CompressionConfig(
        backend="brotli",
        minimum_size=MINIMUM_SIZE,
        brotli_quality=5,
        gzip_compress_level=6,
        exclude=EXCLUDE,
        middleware_class=NegotiatedCompression,
    )
