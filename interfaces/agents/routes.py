"""The agent doors as Litestar routes, and the lifespan that starts the MCP session manager.

Public: ``/.well-known/agent-card.json`` and ``/agent/discover``. Everything else needs an API
key or Bearer token and counts against the rate limit (``provide_principal``, as REST).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request, Response, Router, asgi, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.handlers import ASGIRouteHandler, HTTPRouteHandler

from infrastructure.identity.auth import Principal
from interfaces.agents import a2a_simple, acp, fipa, kqml, langchain
from interfaces.agents.a2a_rpc import A2ARpc, agent_card_json
from interfaces.agents.detect import detect
from interfaces.agents.discovery import discover_document
from interfaces.agents.mcp_server import McpDoor
from interfaces.agents.wire import Caller, decode, failure
from interfaces.http.errors import PROBLEM
from interfaces.http.openapi import AUTHED, PUBLIC, errors, json_body, operation
from interfaces.http.security import provide_principal
from interfaces.presenters.agents import (
    A2AReply,
    AcpReply,
    AgentCard,
    AnyReply,
    Discovery,
    FipaReply,
    JsonRpcResponse,
    KqmlReply,
    LangchainReply,
    LangchainTools,
)

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

Translator = Callable[[Caller, Any], Awaitable[tuple[int, dict[str, Any]]]]
TRANSLATORS: dict[str, Translator] = {
    "a2a": a2a_simple.handle,
    "acp": acp.handle,
    "fipa": fipa.handle,
    "kqml": kqml.handle,
    "langchain": langchain.handle,
}
REPLIES: dict[str, type[msgspec.Struct]] = {
    "a2a": A2AReply,
    "acp": AcpReply,
    "fipa": FipaReply,
    "kqml": KqmlReply,
    "langchain": LangchainReply,
}
MCP_PATH = "/api/v1/mcp"
MESSAGE = operation(body=json_body("The agent message, in the protocol the route names"))
DOOR_ERRORS = errors(*AUTHED, 402, 404, 413)


class AgentDoors:
    """One app's agent doors: the services, the MCP session manager and the A2A dispatcher
    (built by the composition root, ``interfaces.bootstrap.serving``; the ``agents``
    dependency). A plain class: the dependency is handed over as is, never validated."""

    def __init__(self, container: Container, runtime: ProxyRuntime) -> None:
        self.container = container
        self.runtime = runtime
        self.mcp = McpDoor(container, runtime)
        self.rpc = A2ARpc(container, runtime)

    @asynccontextmanager
    async def running(self, _app: Litestar) -> AsyncIterator[None]:
        """The app's lifespan: the MCP session manager runs while the app does."""
        async with self.mcp.manager.run():
            yield


def _json(status: int, body: dict[str, Any], **headers: str) -> Response[Any]:
    """A reply; an error reply is an RFC 9457 problem, so it says so in its media type."""
    media_type = PROBLEM if status >= 400 else "application/json"
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def _reply(protocol: str, status: int, body: dict[str, Any]) -> Response[Any]:
    """A translator's reply: a success is its protocol's typed reply (``REPLIES``); a reply
    with a member the type does not show fails here rather than go out undocumented."""
    if status >= 400:
        return _json(status, body)
    return Response(msgspec.convert(body, REPLIES[protocol]), status_code=status)


async def _translate(
    request: Request[Any, Any, Any], doors: AgentDoors, principal: Principal, protocol: str
) -> Response[Any]:
    body = await request.body()
    message = decode(body)
    if protocol == "a2a" and isinstance(message, dict) and "jsonrpc" in message:
        return await doors.rpc.respond(request, body, principal)
    caller = Caller(doors.container, doors.runtime, principal)
    status, reply = await TRANSLATORS[protocol](caller, message)
    return _reply(protocol, status, reply)


@post(
    "/a2a",
    status_code=200,
    summary="A2A: JSON-RPC (message/send, tasks/get) or {action, …}",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "Agent-to-Agent (A2A) protocol: a JSON-RPC 2.0 request (`message/send`, `tasks/get`) or a "
        "plain `{action, parameters}` message. Actions are the agent card's skills (credits, "
        "offers, rentals, spending, proxy, …) and run as the caller, so they change what the same "
        "REST call would (renting takes a credit hold). Any authenticated caller. 400 for a "
        "message that is not A2A; 402 and 404 as the action's REST route; 413 over the body limit."
    ),
)
async def a2a(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    agents: NamedDependency[AgentDoors],
) -> Response[A2AReply | JsonRpcResponse]:
    return await _translate(request, agents, principal, "a2a")


@post(
    "/acp",
    status_code=200,
    summary="ACP: {header: {sender, message_type}, payload}",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "Agent Communication Protocol: a message `{header: {sender, message_type}, payload}` whose "
        "payload names an action (the same actions as A2A), run as the caller and changing what "
        "the same REST call would. Any authenticated caller. 400 for a malformed message; 402 and "
        "404 as the action's REST route; 413 over the body limit."
    ),
)
async def acp_door(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    agents: NamedDependency[AgentDoors],
) -> Response[AcpReply]:
    return await _translate(request, agents, principal, "acp")


@post(
    "/fipa",
    status_code=200,
    summary="FIPA ACL: request, query-ref, query-if, cfp, …",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "FIPA ACL: a message with a performative (request, query-ref, query-if, cfp, …) whose "
        "content names an action (the same actions as A2A), run as the caller; the answer is an "
        "ACL reply (inform, agree, refuse, failure, propose). Any authenticated caller. 400 for a "
        "malformed message; 402 and 404 as the action's REST route; 413 over the body limit."
    ),
)
async def fipa_door(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    agents: NamedDependency[AgentDoors],
) -> Response[FipaReply]:
    return await _translate(request, agents, principal, "fipa")


@post(
    "/kqml",
    status_code=200,
    summary="KQML: ask-one, ask-all, ask-if, tell, achieve",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "KQML: a message with a performative (ask-one, ask-all, ask-if, tell, achieve) whose "
        "content names an action (the same actions as A2A), run as the caller; the answer is a "
        "KQML reply. Any authenticated caller. 400 for a malformed message; 402 and 404 as the "
        "action's REST route; 413 over the body limit."
    ),
)
async def kqml_door(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    agents: NamedDependency[AgentDoors],
) -> Response[KqmlReply]:
    return await _translate(request, agents, principal, "kqml")


@post(
    "/langchain",
    status_code=200,
    summary="LangChain: execute a tool",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "LangChain: executes one tool from GET /langchain/tools with its arguments, as the caller, "
        "and answers the tool's output; tools that rent, destroy or proxy change what the same "
        "REST call would. Any authenticated caller. 400 for an unknown tool or bad arguments; 402 "
        "and 404 as the tool's REST route; 413 over the body limit."
    ),
)
async def langchain_door(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    agents: NamedDependency[AgentDoors],
) -> Response[LangchainReply]:
    return await _translate(request, agents, principal, "langchain")


@get(
    "/langchain/tools",
    summary="LangChain tool definitions with argument schemas",
    responses=errors(401, 429),
    description=(
        "The LangChain tool definitions that POST /langchain executes: name, description and a "
        "JSON Schema of the arguments for each. Any authenticated caller; changes nothing."
    ),
)
async def langchain_tools(
    principal: NamedDependency[Principal],  # noqa: ARG001 - runs the auth dependency
) -> LangchainTools:
    return msgspec.convert({"tools": langchain.tools()}, LangchainTools)


@post(
    "/agent",
    status_code=200,
    summary="Any agent protocol, detected from the message shape",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "One door for every agent protocol: the protocol (A2A, ACP, FIPA ACL, KQML, LangChain) is "
        "detected from the message's shape and the message is handled as that protocol's own route "
        "would, with `X-Agent-Protocol` naming it; an MCP message gets 307 to /api/v1/mcp. Any "
        "authenticated caller. 400 when no protocol matches; 402 and 404 as the action's REST "
        "route; 413 over the body limit."
    ),
)
async def agent(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    agents: NamedDependency[AgentDoors],
) -> Response[AnyReply]:
    body = await request.body()
    message = decode(body)
    try:
        protocol = detect(message)
    except Exception as exc:
        status, problem = failure(exc)
        return _json(status, problem)
    if protocol == "mcp":
        note = {
            "detected": "mcp",
            "endpoint": MCP_PATH,
            "message": "MCP is served over Streamable HTTP at /api/v1/mcp (redirected)",
        }
        return _json(307, note, Location=MCP_PATH, **{"X-Agent-Protocol": "mcp"})
    answer: Response[Any]
    if protocol == "a2a-jsonrpc":
        answer = await agents.rpc.respond(request, body, principal)
    else:
        caller = Caller(agents.container, agents.runtime, principal)
        answer = _reply(protocol, *await TRANSLATORS[protocol](caller, message))
    answer.headers["X-Agent-Protocol"] = protocol
    return answer


PUBLIC_CACHE = CacheControlHeader(public=True, max_age=300)


@get(
    "/agent/discover",
    summary="Agent protocols, endpoints and capabilities (public)",
    cache_control=PUBLIC_CACHE,
    operation_class=PUBLIC,
    tags=["agents"],
    description=(
        "The agent protocols this server speaks, their endpoints, how to authenticate and what "
        "each can do, for agents finding their way. Public (no credential) and cacheable for 5 "
        "minutes; it changes nothing."
    ),
)
async def discover() -> Discovery:
    return discover_document()


@get(
    "/.well-known/agent-card.json",
    summary="A2A agent card (public)",
    cache_control=PUBLIC_CACHE,
    operation_class=PUBLIC,
    tags=["agents"],
    description=(
        "The A2A agent card: name, description, skills, JSON-RPC endpoints and security schemes, "
        "with URLs from `PUBLIC_URL` (never the request's Host). Public (no credential) and "
        "cacheable for 5 minutes; it changes nothing."
    ),
)
async def agent_card(c: NamedDependency[Container]) -> AgentCard:
    """URLs from ``PUBLIC_URL`` (or the listening address), never the request's ``Host``."""
    return msgspec.convert(agent_card_json(c.settings.http.base_url), AgentCard)


def mcp_route(doors: AgentDoors) -> ASGIRouteHandler:
    """MCP Streamable HTTP (POST messages, GET stream, DELETE session) on this app's door."""

    @asgi(MCP_PATH, copy_scope=False)
    async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
        await doors.mcp(scope, receive, send)

    return mcp


router = Router(
    path="/api/v1",
    tags=["agents"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[a2a, acp_door, fipa_door, kqml_door, langchain_door, langchain_tools, agent],
)


def route_handlers(doors: AgentDoors) -> list[Router | HTTPRouteHandler | ASGIRouteHandler]:
    """The agent routes of one app (its MCP door is a route of its own)."""
    return [router, discover, agent_card, mcp_route(doors)]
