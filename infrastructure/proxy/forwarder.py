"""Sends one proxied request upstream and hands back the answer, streaming.

The client is ``http1.Http1Pool`` (asyncio protocols, llhttp via httptools): measured against
aiohttp, which replaced httpx here before (``docs/adr/0008``, ``docs/adr/0024``).

What it does and does not do:

- **One connection pool** per ``Forwarder`` and event loop (created lazily on first use or by
  ``start``; ``aclose`` closes it): keep-alive reuse, at most ``max_connections`` idle per
  host, no cookies, no proxy from the environment, TLS verified, bodies passed through still
  encoded (``Content-Encoding`` travels with them). No header is added that the caller did not
  send (no default ``User-Agent``, ``Accept``, ``Accept-Encoding`` or ``Content-Type``) besides
  ``Host`` and the body's framing (``Content-Length``, or ``Transfer-Encoding: chunked`` for a
  streamed body).
- **Redirects are not followed.** A 3xx is handed back to the caller as it came (``Location``
  included), so a redirect can never lead the proxy itself anywhere: only URLs that passed
  ``TargetGuard`` are ever connected to.
- **Headers** (``forward_request_headers``, applied by ``send`` itself): hop-by-hop headers
  (``Connection`` and every header it names, ``Keep-Alive``, ``Proxy-*``, ``TE``, ``Trailer``,
  ``Transfer-Encoding``, ``Upgrade``), ``Host``, ``Content-Length`` and ``Expect`` (the client
  library frames the body itself), the caller's credentials for *our* API (``Authorization``,
  ``X-API-Key``, ``Cookie``), the proxy's own ``X-Timelimit``, and caller-supplied
  ``Forwarded``/``X-Forwarded-*``/``X-Real-IP`` (spoofing) are dropped; ``extra_headers`` (the
  proxy's own, e.g. an ``X-Forwarded-For`` it computed) are added after filtering.
  ``forward_response_headers`` drops hop-by-hop headers, ``Content-Length`` (the server frames
  the body again), ``Date`` (the server adds its own) and headers that act on *our* API's
  origin rather than the instance: ``Set-Cookie`` (a cookie from the user's GPU would land on
  our origin, beside our own), ``Alt-Svc``, ``Strict-Transport-Security``, ``Clear-Site-Data``
  and ``Public-Key-Pins``.
- **Host**: ``host_header`` (``Target.host_header``) is sent as ``Host``; for ``https`` to a
  pinned address it is also the TLS server name (SNI and certificate check).
- **Time limits**: connecting is bounded by ``connect_timeout``; ``timeout`` (the caller's
  ``X-Timelimit``, seconds) bounds the whole exchange from ``send`` until ``read()`` returns
  the body. For streaming (``iter_chunks``) it bounds the time to the response headers and
  then *each* chunk read (the time without data), not the length of the whole stream.
- **Errors**: ``UpstreamConnectError`` (502: refused, unreachable, DNS, TLS or connect timeout:
  nothing was delivered, so another instance may be tried; a streamed request body cannot be
  replayed), ``UpstreamTimeoutError`` (504: the time limit passed), ``UpstreamError`` (502:
  anything else, e.g. the connection dropped mid-response; the base class of both).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import NoReturn, Self
from urllib.parse import urlsplit

from domain.errors import DomainError
from infrastructure.proxy.http1 import (
    ConnectFailedError,
    Connection,
    Http1Pool,
    ResponseFailedError,
)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    "authorization",
    "x-api-key",
    "cookie",
    "x-timelimit",
    "forwarded",
    "x-real-ip",
}
RESPONSE_DROP = HOP_BY_HOP | {
    "content-length",
    "date",
    "set-cookie",
    "set-cookie2",
    "alt-svc",
    "strict-transport-security",
    "clear-site-data",
    "public-key-pins",
    "public-key-pins-report-only",
}

Headers = Mapping[str, str] | Iterable[tuple[str, str]]
Body = bytes | AsyncIterator[bytes] | None


class UpstreamError(DomainError):
    """The instance's answer failed (also the base of the two below)."""

    status = 502
    title = "Bad gateway"


class UpstreamConnectError(UpstreamError):
    """No connection to the instance: nothing was delivered (another instance may be tried)."""

    status = 502
    title = "Instance unreachable"


class UpstreamTimeoutError(UpstreamError):
    """The time limit passed before the instance answered (or finished answering)."""

    status = 504
    title = "Gateway timeout"


def _connection_tokens(headers: list[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }


def _filter(headers: Iterable[tuple[str, str]], drop: frozenset[str]) -> list[tuple[str, str]]:
    pairs = list(headers)
    named = _connection_tokens(pairs)
    if named:
        drop = drop | named
    return [(k, v) for k, v in pairs if k.lower() not in drop]


def forward_request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The caller's headers that may go to the instance (see the module docstring)."""
    return [
        (k, v)
        for k, v in _filter(headers, REQUEST_DROP)
        if not k.lower().startswith("x-forwarded-")
    ]


def forward_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instance's response headers that may go back to the caller."""
    return _filter(headers, RESPONSE_DROP)


def _pairs(headers: Headers) -> list[tuple[str, str]]:
    if isinstance(headers, Mapping):
        return list(headers.items())
    return list(headers)


_RESPONSE_DROP_BYTES = frozenset(name.encode() for name in RESPONSE_DROP)


def forward_response_raw(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``forward_response_headers`` on raw header bytes; names come back lower-case."""
    lowered = [(name.lower(), value) for name, value in headers]
    drop = _RESPONSE_DROP_BYTES
    named = [
        token.strip().lower()
        for name, value in lowered
        if name == b"connection"
        for token in value.split(b",")
        if token.strip()
    ]
    if named:
        drop = drop | frozenset(named)
    return [(name, value) for name, value in lowered if name not in drop]


def _raise_mapped(exc: BaseException, url: str) -> NoReturn:
    where = urlsplit(url).netloc
    if isinstance(exc, ConnectFailedError):
        raise UpstreamConnectError(f"cannot connect to {where}: {exc}") from exc
    if isinstance(exc, TimeoutError):
        raise UpstreamTimeoutError(f"{where} did not answer within the time limit") from exc
    raise UpstreamError(f"{where} failed: {type(exc).__name__}: {exc}") from exc


_MAPPED = (ResponseFailedError, OSError, TimeoutError, ValueError, ssl.SSLError)
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "DELETE", "CONNECT"})


class UpstreamResponse:
    """The instance's answer: ``status``, filtered ``headers``, and the body to read once.

    Read it with ``read()`` or ``iter_chunks()``, or give it back with ``release()``/``aclose()``
    (also ``async with``); reading to the end releases it. ``raw_headers``: the filtered
    headers as ASGI wants them (lower-case names, bytes).
    """

    def __init__(
        self,
        conn: Connection,
        url: str,
        *,
        deadline: float | None,
        chunk_timeout: float | None,
    ) -> None:
        self._conn: Connection | None = conn
        self._url = url
        self._deadline = deadline
        self._chunk_timeout = chunk_timeout
        self.status: int = conn.status
        self.reason: str = conn.reason.decode("latin-1")
        self.raw_headers = forward_response_raw(conn.raw_headers)
        self._length = _content_length(conn.raw_headers)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.raw_headers]

    @property
    def content_length(self) -> int | None:
        """The body's length as the instance announced it (None: chunked or unknown)."""
        return self._length

    async def read(self) -> bytes:
        """The whole body, within what is left of the time limit."""
        conn = self._conn
        if conn is None:
            raise UpstreamError("the answer was already read or released")
        try:
            if conn.complete and conn.error is None:  # already in: no timer needed
                body = b"".join(conn.chunks)
                conn.chunks.clear()
                conn.buffered = 0
                return body
            if self._deadline is None:
                return await _read_all(conn)
            async with asyncio.timeout_at(self._deadline):
                return await _read_all(conn)
        except _MAPPED as exc:
            _raise_mapped(exc, self._url)
        finally:
            self.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, unbuffered; each wait for data is bounded by the timeout."""
        conn = self._conn
        if conn is None:
            raise UpstreamError("the answer was already read or released")
        try:
            while True:
                if conn.chunks or conn.complete:
                    chunk = await conn.next_chunk()
                else:
                    async with asyncio.timeout(self._chunk_timeout):
                        chunk = await conn.next_chunk()
                if not chunk:
                    return
                yield chunk
        except _MAPPED as exc:
            _raise_mapped(exc, self._url)
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back: to the pool when the body was read, else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.release()

    async def aclose(self) -> None:
        self.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


async def _read_all(conn: Connection) -> bytes:
    parts = []
    while chunk := await conn.next_chunk():
        parts.append(chunk)
    return b"".join(parts)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    length = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            return None
        if lower == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
    return length


def _tls_server_name(url: str, host_header: str | None) -> str | None:
    if host_header is None or not url.lower().startswith("https:"):
        return None
    host = urlsplit(f"//{host_header}").hostname
    if host is None:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None


_URLS_KEPT = 4096


def _split(
    url: str, cache: dict[str, tuple[str, str, int, str, str]]
) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, netloc, target) of an absolute http(s) URL, remembered."""
    parts = cache.get(url)
    if parts is None:
        split = urlsplit(url)
        scheme = split.scheme.lower()
        if scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = split.port or (443 if scheme == "https" else 80)
        target = (split.path or "/") + (f"?{split.query}" if split.query else "")
        parts = (scheme, split.hostname, port, split.netloc, target)
        if len(cache) >= _URLS_KEPT:
            cache.clear()
        cache[url] = parts
    return parts


def _head(
    method: str, target: str, host: str, headers: list[tuple[str, str]], framing: str
) -> bytes:
    """The request line and headers; refuses CR/LF inside any name or value."""
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers)
    if "\n" in fields.replace("\r\n", "") or "\r" in fields.replace("\r\n", ""):
        raise ValueError("a header name or value contains a line break")
    if any(c in target or c in host for c in "\r\n "):
        raise ValueError("the request target or Host contains a line break or space")
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{fields}{framing}\r\n".encode("latin-1")


class Forwarder:
    """A pooled HTTP client for the proxy routes (see the module docstring)."""

    def __init__(
        self,
        *,
        connect_timeout: float = 5.0,
        max_connections: int = 256,
        max_connections_per_host: int = 0,
        keepalive_timeout: float = 30.0,
        verify_tls: bool = True,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_connections_per_host = max_connections_per_host
        self.keepalive_timeout = keepalive_timeout
        self.verify_tls = verify_tls
        self._pool: Http1Pool | None = None
        self._urls: dict[str, tuple[str, str, int, str, str]] = {}

    async def start(self) -> None:
        """Create the pool (in the running event loop); ``send`` does it when needed."""
        self._ensure_pool()

    def _ensure_pool(self) -> Http1Pool:
        pool = self._pool
        if pool is None or pool.loop is not asyncio.get_running_loop():
            if self.verify_tls:
                context = ssl.create_default_context()
            else:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            pool = self._pool = Http1Pool(
                connect_timeout=self.connect_timeout,
                keepalive_timeout=self.keepalive_timeout,
                max_idle_per_host=self.max_connections_per_host or self.max_connections,
                ssl_context=context,
            )
        return pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def send(
        self,
        method: str,
        url: str,
        headers: Headers,
        body: Body,
        *,
        timeout: float | None,
        host_header: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> UpstreamResponse:
        """Send the request; returns once the response headers are in (redirects included).

        ``url`` should be a ``Target.url`` (pinned by ``TargetGuard``); it is sent as given,
        without re-quoting. ``headers`` are filtered with ``forward_request_headers``.
        """
        pool = self._ensure_pool()
        deadline = None if timeout is None else pool.loop.time() + timeout
        try:
            scheme, host, port, netloc, target = _split(url, self._urls)
            out = forward_request_headers(_pairs(headers))
            out.extend(extra_headers)
            if body is None:
                framing = "" if method in _NO_BODY_METHODS else "Content-Length: 0\r\n"
            elif isinstance(body, bytes):
                framing = f"Content-Length: {len(body)}\r\n"
            else:
                framing = "Transfer-Encoding: chunked\r\n"
            head = _head(method, target, host_header or netloc, out, framing)
            key = (scheme, host, port, _tls_server_name(url, host_header))
            # the time limit by the connection's own timer (``Connection.watch``): no
            # ``asyncio.timeout_at`` per request
            conn = await pool.request(key, method, head, body, deadline)
        except _MAPPED as exc:
            _raise_mapped(exc, url)
        return UpstreamResponse(conn, url, deadline=deadline, chunk_timeout=timeout)
