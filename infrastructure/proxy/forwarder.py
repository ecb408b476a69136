"""Sends one proxied request upstream and hands back the answer, streaming (aiohttp).

Why aiohttp: measured against httpx in the same bare forwarder (``docs/adr/0008``).

What it does and does not do:

- **One pooled ``aiohttp.ClientSession``** per ``Forwarder`` (created lazily on first use or by
  ``start``; ``aclose`` closes it): ``max_connections`` in all, keep-alive reuse, no cookie jar,
  no proxy from the environment, TLS verified, bodies passed through still encoded
  (``auto_decompress=False``: ``Content-Encoding`` travels with them). No header is added that
  the caller did not send (no default ``User-Agent``, ``Accept``, ``Accept-Encoding`` or
  ``Content-Type``).
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
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import NoReturn, Self
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from domain.errors import DomainError

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
SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

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


def _raise_mapped(exc: BaseException, url: str) -> NoReturn:
    where = urlsplit(url).netloc
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        raise UpstreamConnectError(f"connecting to {where} timed out") from exc
    if isinstance(exc, aiohttp.ClientConnectorError):
        raise UpstreamConnectError(f"cannot connect to {where}: {exc.os_error}") from exc
    if isinstance(exc, TimeoutError):
        raise UpstreamTimeoutError(f"{where} did not answer within the time limit") from exc
    raise UpstreamError(f"{where} failed: {type(exc).__name__}: {exc}") from exc


_MAPPED = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


class UpstreamResponse:
    """The instance's answer: ``status``, filtered ``headers``, and the body to read once.

    Read it with ``read()`` or ``iter_chunks()``, or give it back with ``release()``/``aclose()``
    (also ``async with``); reading to the end releases it.
    """

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        url: str,
        *,
        deadline: float | None,
        chunk_timeout: float | None,
    ) -> None:
        self._response = response
        self._url = url
        self._deadline = deadline
        self._chunk_timeout = chunk_timeout
        self.status: int = response.status
        self.reason: str = response.reason or ""
        self.headers: list[tuple[str, str]] = forward_response_headers(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers
        )

    @property
    def content_length(self) -> int | None:
        """The body's length as the instance announced it (None: chunked or unknown)."""
        length: int | None = self._response.content_length
        return length

    async def read(self) -> bytes:
        """The whole body, within what is left of the time limit."""
        try:
            if self._response.content.is_eof() or self._deadline is None:
                return await self._response.read()  # already in: no timer needed
            async with asyncio.timeout_at(self._deadline):
                return await self._response.read()
        except _MAPPED as exc:
            _raise_mapped(exc, self._url)
        finally:
            self.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, unbuffered; each wait for data is bounded by the timeout."""
        try:
            while True:
                async with asyncio.timeout(self._chunk_timeout):
                    chunk = await self._response.content.readany()
                if not chunk:
                    return
                yield chunk
        except _MAPPED as exc:
            _raise_mapped(exc, self._url)
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back: to the pool when the body was read, else closed."""
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()

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
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the session (in the running event loop); ``send`` does it when needed."""
        self._ensure_session()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=self.max_connections_per_host,
                keepalive_timeout=self.keepalive_timeout,
                use_dns_cache=False,
                ssl=self.verify_tls,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=SKIP_AUTO_HEADERS,
                auto_decompress=False,
                trust_env=False,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=None, sock_connect=self.connect_timeout, sock_read=None
                ),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        session = self._ensure_session()
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        out: CIMultiDict[str] = CIMultiDict(forward_request_headers(_pairs(headers)))
        for name, value in extra_headers:
            out.add(name, value)
        if host_header is not None:
            out["Host"] = host_header
        try:
            async with asyncio.timeout_at(deadline):
                response = await session.request(
                    method,
                    URL(url, encoded=True),
                    headers=out,
                    data=body,
                    allow_redirects=False,
                    server_hostname=_tls_server_name(url, host_header),
                )
        except _MAPPED as exc:
            _raise_mapped(exc, url)
        return UpstreamResponse(response, url, deadline=deadline, chunk_timeout=timeout)
