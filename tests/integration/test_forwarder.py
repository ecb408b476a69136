"""The proxy's forwarder against real local upstream servers (aiohttp.web on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from infrastructure.proxy.forwarder import (
    Forwarder,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
    _tls_server_name,
    forward_request_headers,
    forward_response_headers,
)
from tests.support.pg import free_port

pytestmark = pytest.mark.anyio
WAIT = 5.0  # seconds a test waits for something that should happen at once


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Upstream:
    """A real HTTP server in the test's event loop, plus what it saw and when to go on."""

    def __init__(self) -> None:
        self.go_on = asyncio.Event()  # streaming handlers wait for it between chunks
        self.finished = asyncio.Event()  # set when a streaming handler wrote its last chunk
        self.base = ""
        self.runner: web.AppRunner | None = None

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        seen = {
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "body": body.decode("latin-1"),
        }
        response = web.json_response(seen, status=int(request.query.get("status", "200")))
        response.headers.add("Set-Cookie", "session=upstream; Path=/")
        response.headers.add("Set-Cookie", "other=1")
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
        response.headers["X-Upstream"] = "yes"
        response.headers.add("Link", "</a>; rel=preload")
        response.headers.add("Link", "</b>; rel=preload")
        return response

    async def redirect(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound(location=f"{self.base}/echo?followed=1")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        response = web.StreamResponse()
        if kind == "sse":
            response.content_type = "text/event-stream"
            response.headers["Cache-Control"] = "no-cache"
            first, second = b"event: token\ndata: one\n\n", b"data: two\n\n"
        else:
            response.content_type = "text/plain"
            first, second = b"first\n", b"second\n"
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(first)
        await self.go_on.wait()  # the test sets this only after it received the first chunk
        await response.write(second)
        self.finished.set()
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "2")))
        return web.Response(text="late")

    async def slow_body(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        await response.write(b"start ")
        await asyncio.sleep(float(request.query.get("s", "2")))
        await response.write(b"end")
        await response.write_eof()
        return response

    async def cut(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 10)
        assert request.transport is not None
        request.transport.close()
        return response

    async def upload(self, request: web.Request) -> web.Response:
        chunks = [chunk async for chunk in request.content.iter_any()]
        return web.json_response(
            {
                "body": b"".join(chunks).decode(),
                "transfer_encoding": request.headers.get("Transfer-Encoding"),
                "content_length": request.headers.get("Content-Length"),
            }
        )

    async def gzipped(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"hello " * 100),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/stream/{kind}", self.stream)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/slow-body", self.slow_body)
        app.router.add_get("/cut", self.cut)
        app.router.add_post("/upload", self.upload)
        app.router.add_get("/gzip", self.gzipped)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.go_on.set()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    async with Forwarder(connect_timeout=2.0) as fwd:
        yield fwd


def names(headers: list[list[str]] | list[tuple[str, str]]) -> set[str]:
    return {name.lower() for name, _ in headers}


async def echo_json(response: UpstreamResponse) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(await response.read())
    return result


# ------------------------------------------------------------------------- round trips


async def test_get_round_trip(upstream: Upstream, forwarder: Forwarder) -> None:
    response = await forwarder.send(
        "GET", f"{upstream.base}/echo?a=1&b=%20", {"Accept": "application/json"}, None, timeout=5
    )
    assert response.status == 200
    seen = await echo_json(response)
    assert seen["method"] == "GET"
    assert seen["path"] == "/echo?a=1&b=%20"
    assert ["Accept", "application/json"] in seen["headers"]
    # Nothing the caller did not send is added (no default User-Agent, Accept-Encoding).
    assert not names(seen["headers"]) & {"user-agent", "accept-encoding", "content-type"}
    assert ("x-upstream", "yes") in [(k.lower(), v) for k, v in response.headers]


async def test_post_round_trip_with_body_and_headers(
    upstream: Upstream, forwarder: Forwarder
) -> None:
    body = json.dumps({"inputs": [1, 2, 3]}).encode()
    headers = [("Content-Type", "application/json"), ("X-Custom", "a"), ("X-Custom", "b")]
    response = await forwarder.send(
        "POST", f"{upstream.base}/echo?status=201", headers, body, timeout=5
    )
    assert response.status == 201
    seen = await echo_json(response)
    assert seen["method"] == "POST"
    assert seen["body"] == body.decode()
    assert ["Content-Type", "application/json"] in seen["headers"]
    assert [v for k, v in seen["headers"] if k == "X-Custom"] == ["a", "b"]
    assert ["Content-Length", str(len(body))] in seen["headers"]


async def test_host_header_is_sent(upstream: Upstream, forwarder: Forwarder) -> None:
    response = await forwarder.send(
        "GET",
        f"{upstream.base}/echo",
        [("Host", "evil.test")],
        None,
        timeout=5,
        host_header="gpu.example.com:8080",
    )
    seen = await echo_json(response)
    assert [v for k, v in seen["headers"] if k.lower() == "host"] == ["gpu.example.com:8080"]


async def test_hop_by_hop_and_credentials_are_not_forwarded(
    upstream: Upstream, forwarder: Forwarder
) -> None:
    sent = [
        ("Authorization", "Bearer our-api-token"),
        ("X-API-Key", "gpx_secret"),
        ("Cookie", "session=ours"),
        ("Connection", "keep-alive, X-Secret-Hop"),
        ("X-Secret-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Connection", "keep-alive"),
        ("X-Timelimit", "30"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Host", "evil.test"),
        ("Forwarded", "for=6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
        ("Host", "evil.test"),
        ("Content-Length", "999"),
        ("Transfer-Encoding", "chunked"),
        ("Expect", "100-continue"),
        ("X-Kept", "yes"),
        ("User-Agent", "client/1.0"),
    ]
    response = await forwarder.send(
        "POST",
        f"{upstream.base}/echo",
        sent,
        b"hello",
        timeout=5,
        extra_headers=[("X-Forwarded-For", "203.0.113.7")],
    )
    seen = await echo_json(response)
    received = names(seen["headers"])
    dropped = {
        "authorization",
        "x-api-key",
        "cookie",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "x-timelimit",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "transfer-encoding",
        "expect",
    }
    assert not received & dropped
    assert ["X-Kept", "yes"] in seen["headers"]
    assert ["User-Agent", "client/1.0"] in seen["headers"]
    assert ["Content-Length", "5"] in seen["headers"]
    assert [v for k, v in seen["headers"] if k.lower() == "x-forwarded-for"] == ["203.0.113.7"]
    assert [v for k, v in seen["headers"] if k.lower() == "host"] != ["evil.test"]
    assert seen["body"] == "hello"


async def test_response_headers_are_filtered(upstream: Upstream, forwarder: Forwarder) -> None:
    response = await forwarder.send("GET", f"{upstream.base}/echo", {}, None, timeout=5)
    await response.read()
    got = names(response.headers)
    assert not got & {
        "set-cookie",
        "keep-alive",
        "strict-transport-security",
        "content-length",
        "transfer-encoding",
        "connection",
        "date",
    }
    assert [v for k, v in response.headers if k.lower() == "link"] == [
        "</a>; rel=preload",
        "</b>; rel=preload",
    ]
    assert "content-type" in got


async def test_redirect_is_returned_not_followed(upstream: Upstream, forwarder: Forwarder) -> None:
    async with await forwarder.send(
        "GET", f"{upstream.base}/redirect", {}, None, timeout=5
    ) as response:
        assert response.status == 302
        location = {k.lower(): v for k, v in response.headers}["location"]
        assert location == f"{upstream.base}/echo?followed=1"


async def test_encoded_body_passes_through_untouched(
    upstream: Upstream, forwarder: Forwarder
) -> None:
    response = await forwarder.send(
        "GET", f"{upstream.base}/gzip", {"Accept-Encoding": "gzip"}, None, timeout=5
    )
    body = await response.read()
    assert ("content-encoding", "gzip") in [(k.lower(), v) for k, v in response.headers]
    assert gzip.decompress(body) == b"hello " * 100


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("kind", ["chunks", "sse"])
async def test_stream_arrives_chunk_by_chunk(
    upstream: Upstream, forwarder: Forwarder, kind: str
) -> None:
    response = await forwarder.send("GET", f"{upstream.base}/stream/{kind}", {}, None, timeout=5)
    chunks = response.iter_chunks()
    # The upstream is blocked on go_on until we have the first chunk: buffering would hang.
    first = await asyncio.wait_for(anext(chunks), WAIT)
    assert not upstream.finished.is_set()
    upstream.go_on.set()
    rest = [chunk async for chunk in chunks]
    assert upstream.finished.is_set()
    body = first + b"".join(rest)
    if kind == "sse":
        assert first == b"event: token\ndata: one\n\n"
        assert body == b"event: token\ndata: one\n\ndata: two\n\n"
        assert ("content-type", "text/event-stream") in [
            (k.lower(), v) for k, v in response.headers
        ]
    else:
        assert first == b"first\n"
        assert body == b"first\nsecond\n"


async def test_stream_abandoned_early_is_released(upstream: Upstream, forwarder: Forwarder) -> None:
    response = await forwarder.send("GET", f"{upstream.base}/stream/chunks", {}, None, timeout=5)
    chunks = response.iter_chunks()
    assert await asyncio.wait_for(anext(chunks), WAIT) == b"first\n"
    await chunks.aclose()  # type: ignore[attr-defined]
    await response.aclose()
    again = await forwarder.send("GET", f"{upstream.base}/echo", {}, None, timeout=5)
    assert again.status == 200
    await again.read()


async def test_streamed_request_body_is_sent_through(
    upstream: Upstream, forwarder: Forwarder
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"alpha ", b"beta ", b"gamma"):
            await asyncio.sleep(0.01)
            yield part

    response = await forwarder.send(
        "POST", f"{upstream.base}/upload", {"Content-Length": "3"}, body(), timeout=5
    )
    seen = await echo_json(response)
    assert seen["body"] == "alpha beta gamma"
    assert seen["transfer_encoding"] == "chunked"
    assert seen["content_length"] is None


# ------------------------------------------------------------------------------ errors


async def test_slow_upstream_over_the_timeout(upstream: Upstream, forwarder: Forwarder) -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeoutError) as info:
        await forwarder.send("GET", f"{upstream.base}/slow?s=3", {}, None, timeout=0.3)
    assert asyncio.get_running_loop().time() - started < 2
    assert info.value.status == 504


async def test_timeout_bounds_reading_the_body(upstream: Upstream, forwarder: Forwarder) -> None:
    response = await forwarder.send("GET", f"{upstream.base}/slow-body?s=3", {}, None, timeout=0.5)
    assert response.status == 200
    with pytest.raises(UpstreamTimeoutError):
        await response.read()


async def test_streaming_bounds_each_chunk(upstream: Upstream, forwarder: Forwarder) -> None:
    response = await forwarder.send("GET", f"{upstream.base}/slow-body?s=3", {}, None, timeout=0.5)
    chunks = response.iter_chunks()
    assert await anext(chunks) == b"start "
    with pytest.raises(UpstreamTimeoutError):
        await anext(chunks)


async def test_streaming_is_not_bounded_as_a_whole(
    upstream: Upstream, forwarder: Forwarder
) -> None:
    response = await forwarder.send(
        "GET", f"{upstream.base}/slow-body?s=0.3", {}, None, timeout=0.5
    )
    await asyncio.sleep(0.4)  # past half the limit before reading, then each chunk in time
    body = b"".join([chunk async for chunk in response.iter_chunks()])
    assert body == b"start end"


async def test_dead_port_is_a_connect_error(forwarder: Forwarder) -> None:
    port = free_port()
    with pytest.raises(UpstreamConnectError) as info:
        await forwarder.send("GET", f"http://127.0.0.1:{port}/", {}, None, timeout=5)
    assert info.value.status == 502
    assert isinstance(info.value, UpstreamError)


async def test_cut_connection_mid_body_is_an_upstream_error(
    upstream: Upstream, forwarder: Forwarder
) -> None:
    response = await forwarder.send("GET", f"{upstream.base}/cut", {}, None, timeout=5)
    with pytest.raises(UpstreamError) as info:
        await response.read()
    assert type(info.value) is UpstreamError


async def test_forwarder_starts_lazily_and_closes() -> None:
    server = Upstream()
    await server.start()
    fwd = Forwarder()
    try:
        response = await fwd.send("GET", f"{server.base}/echo", {}, None, timeout=None)
        assert response.status == 200
        await response.read()
    finally:
        await fwd.aclose()
        await fwd.aclose()  # twice: harmless
        await server.stop()


# ------------------------------------------------------------------------ header rules


def test_forward_request_headers_rules() -> None:
    kept = forward_request_headers(
        [
            ("connection", "close, X-Drop-Me"),
            ("x-drop-me", "1"),
            ("X-FORWARDED-PROTO", "https"),
            ("content-type", "text/plain"),
            ("accept", "*/*"),
        ]
    )
    assert kept == [("content-type", "text/plain"), ("accept", "*/*")]


def test_forward_response_headers_rules() -> None:
    kept = forward_response_headers(
        [
            ("Connection", "X-Hop"),
            ("X-Hop", "1"),
            ("Set-Cookie", "a=1"),
            ("Alt-Svc", 'h3=":443"'),
            ("Clear-Site-Data", '"*"'),
            ("Transfer-Encoding", "chunked"),
            ("Location", "http://elsewhere/"),
            ("WWW-Authenticate", "Bearer"),
        ]
    )
    assert kept == [("Location", "http://elsewhere/"), ("WWW-Authenticate", "Bearer")]


def test_tls_server_name_comes_from_the_host_header() -> None:
    assert _tls_server_name("https://8.8.8.8/x", "gpu.example.com:8443") == "gpu.example.com"
    assert _tls_server_name("https://8.8.8.8/x", "8.8.8.8") is None
    assert _tls_server_name("https://[::1]/x", "[::1]:8443") is None
    assert _tls_server_name("http://8.8.8.8/x", "gpu.example.com") is None
    assert _tls_server_name("https://8.8.8.8/x", None) is None
