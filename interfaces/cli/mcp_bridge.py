"""``aiserve-gpuproxy-mcp``: an MCP stdio server for desktop assistants (Claude Desktop, …).

It connects to a GPU Proxy server's Streamable HTTP endpoint (``/api/v1/mcp``) with the
official SDK client, authenticated by an API key (``X-API-Key``) or a Bearer token, and serves
the same tools over stdio: ``tools/list`` and ``tools/call`` are forwarded, ``initialize`` and
``ping`` are answered locally. Configure with flags or ``GPUPROXY_SERVER`` /
``GPUPROXY_API_KEY`` / ``GPUPROXY_TOKEN``. Logs go to stderr; stdout carries the protocol.
Exit codes: 2 bad arguments or no credential, 1 the bridge failed (unreachable, refused).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import httpx
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared._httpx_utils import create_mcp_http_client

from interfaces.cli.common import OneLineParser

log = logging.getLogger("aiserve.mcp_bridge")
DEFAULT_SERVER = "http://localhost:8080"
VERSION = "1.0.0"


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="aiserve-gpuproxy-mcp",
        description="MCP stdio bridge to a GPU Proxy server (for Claude Desktop and others)",
    )
    parser.add_argument(
        "--server",
        type=server_url,
        default=os.environ.get("GPUPROXY_SERVER", DEFAULT_SERVER),
        help="server base URL or MCP endpoint (env GPUPROXY_SERVER, default %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GPUPROXY_API_KEY", ""),
        help="API key sent as X-API-Key (env GPUPROXY_API_KEY)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("GPUPROXY_TOKEN", ""),
        help="Bearer token instead of an API key (env GPUPROXY_TOKEN)",
    )
    parser.add_argument("-dm", "--debug-mode", action="store_true", help="debug logs to stderr")
    return parser


def server_url(text: str) -> str:
    """An http(s) URL with a host; anything else is a usage error (exit 2)."""
    url = httpx.URL(text.strip()) if "://" in text else None
    if url is None or url.scheme not in {"http", "https"} or not url.host:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL (e.g. {DEFAULT_SERVER})")
    return text.strip()


def endpoint(server: str) -> str:
    """``http://host:8080`` → ``http://host:8080/api/v1/mcp``; a full MCP URL is kept."""
    url = server.strip().rstrip("/")
    return url if url.endswith("/mcp") else f"{url}/api/v1/mcp"


def bridge(upstream: Client) -> Server[Any]:
    """A stdio-facing server whose tools are the upstream server's."""

    async def list_tools(
        _ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return await upstream.list_tools(cursor=params.cursor if params else None)

    async def call_tool(
        _ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        return await upstream.call_tool(params.name, params.arguments)

    return Server(
        "aiserve-gpuproxy",
        version=VERSION,
        title="GPU Proxy (bridge)",
        instructions=upstream.instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve(url: str, headers: dict[str, str]) -> None:
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as upstream,
    ):
        log.info("connected to %s", url)
        server = bridge(upstream)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug_mode else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not (args.api_key or args.token):
        print("aiserve-gpuproxy-mcp: set GPUPROXY_API_KEY (or --api-key)", file=sys.stderr)
        return 2
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    url = endpoint(args.server)
    try:
        anyio.run(serve, url, headers)
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        log.debug("bridge stopped", exc_info=exc)
        print(f"aiserve-gpuproxy-mcp: {url}: {_reason(exc, url, headers)}", file=sys.stderr)
        return 1
    return 0


def _reason(exc: BaseException, url: str, headers: dict[str, str]) -> str:
    """Why the bridge stopped, in one line; an HTTP refusal (401, 429, …) is asked for again."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    try:  # the SDK reports a refused request without its status: ask the endpoint once more
        probe = httpx.options(url, headers=headers, timeout=5)
    except httpx.HTTPError as unreachable:
        return f"cannot reach the server: {unreachable}"
    if probe.status_code in {401, 403, 429}:
        detail = probe.json().get("detail", probe.reason_phrase) if probe.content else ""
        return f"HTTP {probe.status_code}: {detail}"
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
