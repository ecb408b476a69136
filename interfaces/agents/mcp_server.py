"""MCP over Streamable HTTP at ``/api/v1/mcp``, with the official SDK (``mcp``).

The SDK's low-level ``Server`` and ``StreamableHTTPSessionManager`` own the protocol:
``initialize`` and version negotiation (``MCP-Protocol-Version``), sessions
(``Mcp-Session-Id``; bound to the user who opened them), ``ping``, ``tools/list``,
``tools/call``, and the stateless 2026-07-28 era. We only authenticate each HTTP request
(``X-API-Key`` or Bearer, rate-limited, the same dependency as REST), refuse foreign browser
origins, and map tools onto the action registry. Failed calls are tool errors
(``isError: true``, the REST problem as ``structuredContent``); an unknown tool name is a
JSON-RPC ``-32602`` error, as the specification asks.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

import mcp_types as types
from litestar import Request
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from domain.errors import DomainError
from infrastructure.identity.auth import Principal
from interfaces.agents.actions import ACTIONS, execute, problem_of
from interfaces.agents.discovery import VERSION
from interfaces.http.errors import on_domain_error, problem
from interfaces.http.security import provide_principal

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

PRINCIPAL = "gpuproxy.principal"
INSTRUCTIONS = (
    "GPU Proxy: list GPU offers (list_gpu_instances), rent one (create_gpu_instance), reserve "
    "several (reserve_gpus), see your rentals, credits and spending, and send inference "
    "requests to your running instances (proxy_inference_request). Amounts are USD decimals."
)


def tool_of(name: str) -> types.Tool:
    action = ACTIONS[name]
    return types.Tool(
        name=action.name,
        title=action.name.replace("_", " "),
        description=action.description,
        input_schema=action.schema(),
        annotations=types.ToolAnnotations(
            read_only_hint=action.read_only,
            destructive_hint=action.destructive,
            idempotent_hint=action.read_only,
            open_world_hint=not action.read_only,
        ),
    )


def _principal(ctx: ServerRequestContext[Any, Any]) -> Principal:
    scope = getattr(ctx.request, "scope", None) or {}
    found = scope.get(PRINCIPAL)
    if not isinstance(found, Principal):
        raise MCPError(code=types.INVALID_REQUEST, message="not authenticated")
    return found


def build_server(container: Container, runtime: ProxyRuntime) -> Server[Any]:
    """The MCP server: every registry action as a tool."""

    async def list_tools(
        _ctx: ServerRequestContext[Any, Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool_of(name) for name in ACTIONS])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        if params.name not in ACTIONS:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        principal = _principal(ctx)
        try:
            result = await execute(container, runtime, principal, params.name, params.arguments)
        except Exception as exc:
            failure = problem_of(exc)
            text = f"{failure['title']}: {failure['detail']}"
            return types.CallToolResult(
                content=[types.TextContent(text=text)], structured_content=failure, is_error=True
            )
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(result, indent=2, default=str))],
            structured_content=result,
        )

    return Server(
        "aiserve-gpuproxy",
        version=VERSION,
        title="GPU Proxy",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


class McpDoor:
    """The ASGI endpoint: authenticate, check the origin, hand over to the SDK's manager."""

    def __init__(self, container: Container, runtime: ProxyRuntime) -> None:
        self.container = container
        self.origins = set(container.settings.http.cors_origins)
        self.manager = StreamableHTTPSessionManager(
            build_server(container, runtime), json_response=True
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request: Request[Any, Any, Any] = Request(scope, receive)
        origin = request.headers.get("origin")
        if origin and origin not in self.origins and "*" not in self.origins:
            refused = problem(403, "Forbidden", f"Origin {origin[:100]} is not allowed")
            await refused.to_asgi_response(None, request)(scope, receive, send)
            return
        try:
            principal = await provide_principal(request, self.container)
        except DomainError as exc:
            answer = on_domain_error(request, exc)
            await answer.to_asgi_response(None, request)(scope, receive, send)
            return
        raw: Any = scope
        raw[PRINCIPAL] = principal
        token = AccessToken(token="", client_id=principal.user_id, scopes=[])
        raw["user"] = AuthenticatedUser(token)  # sessions stay with the user who opened them
        await self.manager.handle_request(raw, cast(Any, receive), cast(Any, send))
