"""A2A over JSON-RPC with the official ``a2a-sdk``: the agent card, ``message/send``, tasks.

The SDK's ``JsonRpcDispatcher`` (A2A 1.0 methods plus the 0.3 compatibility layer:
``message/send``, ``tasks/get``, ``tasks/cancel``) and ``DefaultRequestHandler`` with an
in-memory task store scoped per user own the protocol. Our ``AgentExecutor`` reads the command
from the message (a data part ``{"action", "parameters"}``, JSON text, or a bare action name),
runs it through the action registry and finishes the task: ``completed`` with the result as a
data artifact, ``rejected`` (refused: 4xx) or ``failed`` (5xx) with the problem as the status
message.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from a2a.auth.user import User
from a2a.helpers.proto_helpers import (
    get_data_parts,
    get_text_parts,
    new_data_part,
    new_text_part,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.server.tasks.inmemory_task_store import InMemoryTaskStore
from a2a.server.tasks.task_updater import TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    APIKeySecurityScheme,
    HTTPAuthSecurityScheme,
    Message,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    Task,
    TaskState,
    TaskStatus,
)
from a2a.utils.errors import UnsupportedOperationError
from litestar import Response
from starlette.requests import Request as StarletteRequest

from infrastructure.identity.auth import Principal
from interfaces.agents.actions import ACTIONS, execute, problem_of
from interfaces.agents.discovery import VERSION
from interfaces.agents.wire import MalformedMessageError, decode
from interfaces.presenters.agents import JsonRpcError, JsonRpcResponse

if TYPE_CHECKING:
    from a2a.server.context import ServerCallContext
    from a2a.server.events import EventQueue
    from litestar import Request
    from starlette.types import Message as AsgiMessage

    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

PRINCIPAL = "gpuproxy.principal"
STREAMING = frozenset(
    {"message/stream", "tasks/resubscribe", "SendStreamingMessage", "SubscribeToTask"}
)
MAX_TASKS = 1000  # per user: tasks live in this process's memory
RPC_PATH = "/api/v1/a2a"
JSON = "application/json"


class PrincipalUser(User):
    """The authenticated caller as the SDK sees it; tasks are stored per ``user_name``."""

    def __init__(self, principal: Principal | None) -> None:
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return self.principal is not None

    @property
    def user_name(self) -> str:
        return self.principal.user_id if self.principal else ""


class BoundedTaskStore(InMemoryTaskStore):
    """The SDK's in-memory store (tasks per user), keeping each user's newest ``limit`` tasks."""

    def __init__(self, limit: int = MAX_TASKS) -> None:
        super().__init__()
        self.limit = limit
        self._order: dict[str, OrderedDict[str, None]] = {}

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await super().save(task, context)
        order = self._order.setdefault(context.user.user_name, OrderedDict())
        order[task.id] = None
        while len(order) > self.limit:
            oldest, _ = order.popitem(last=False)
            await super().delete(oldest, context)


class PrincipalContextBuilder(DefaultServerCallContextBuilder):
    def build(self, request: StarletteRequest) -> ServerCallContext:
        context = super().build(request)
        context.state[PRINCIPAL] = request.scope.get(PRINCIPAL)
        return context

    def build_user(self, request: StarletteRequest) -> User:
        return PrincipalUser(request.scope.get(PRINCIPAL))


def command_of(message: Message | None) -> tuple[Any, Any]:
    """``(action, parameters)`` from a data part, JSON text, or a bare action name."""
    parts = list(message.parts) if message is not None else []
    candidates = [d for d in get_data_parts(parts) if isinstance(d, dict)]
    for text in get_text_parts(parts):
        stripped = text.strip()
        if not stripped.startswith("{"):
            return stripped, {}
        try:
            candidates.append(json.loads(stripped))
        except ValueError:
            raise MalformedMessageError("the text part is not valid JSON") from None
    for data in candidates:
        if isinstance(data, dict):
            name = data.get("action", data.get("skill", data.get("tool")))
            return name, data.get("parameters", data.get("arguments", {}))
    raise MalformedMessageError(
        'send a data part {"action": <skill id>, "parameters": {...}} (or the action name as text)'
    )


class GpuProxyExecutor(AgentExecutor):
    """Runs one registry action per message and finishes the task with its outcome."""

    def __init__(self, container: Container, runtime: ProxyRuntime) -> None:
        self.container = container
        self.runtime = runtime

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        if context.current_task is None:
            history = [context.message] if context.message is not None else []
            status = TaskStatus(state=TaskState.TASK_STATE_SUBMITTED)
            task = Task(id=task_id, context_id=context_id, status=status, history=history)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task_id, context_id)
        principal = context.call_context.state.get(PRINCIPAL)
        try:
            if not isinstance(principal, Principal):
                raise MalformedMessageError("not authenticated")
            name, args = command_of(context.message)
            result = await execute(self.container, self.runtime, principal, name, args)
        except Exception as exc:
            problem = problem_of(exc)
            note = new_text_part(f"{problem['title']}: {problem['detail']}")
            message = updater.new_agent_message([note, new_data_part(problem)])
            finish = updater.reject if problem["status"] < 500 else updater.failed
            await finish(message)
            return
        await updater.add_artifact([new_data_part(result)], name="result")
        await updater.complete()

    async def cancel(
        self,
        context: RequestContext,  # noqa: ARG002 - the SDK passes these by name
        event_queue: EventQueue,  # noqa: ARG002
    ) -> None:
        raise UnsupportedOperationError(message="tasks finish at once and cannot be cancelled")


def agent_card(base_url: str) -> AgentCard:
    url = base_url.rstrip("/") + RPC_PATH
    return AgentCard(
        name="GPU Proxy",
        description=(
            "Rent GPUs across marketplaces on one prepaid credit balance, watch spending and "
            "send inference requests to your instances. Send a data part "
            '{"action": <skill id>, "parameters": {...}}.'
        ),
        version=VERSION,
        provider=AgentProvider(organization="aiserve", url=base_url),
        documentation_url=base_url.rstrip("/") + "/agent/discover",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="0.3"),
        ],
        capabilities=AgentCapabilities(streaming=False, push_notifications=False),
        security_schemes={
            "apiKey": SecurityScheme(
                api_key_security_scheme=APIKeySecurityScheme(location="header", name="X-API-Key")
            ),
            "bearer": SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer")
            ),
        },
        security_requirements=[
            SecurityRequirement(schemes={"apiKey": StringList()}),
            SecurityRequirement(schemes={"bearer": StringList()}),
        ],
        default_input_modes=[JSON, "text/plain"],
        default_output_modes=[JSON],
        skills=[
            AgentSkill(
                id=a.name,
                name=a.name.replace("_", " "),
                description=a.description,
                tags=["gpu", "read-only" if a.read_only else "changes-state"],
                examples=[json.dumps({"action": a.name, "parameters": {}})],
            )
            for a in ACTIONS.values()
        ],
    )


def agent_card_json(base_url: str) -> dict[str, Any]:
    """The card as JSON: A2A 1.0 fields plus the 0.3 ones (``url``, ``protocolVersion``, …)."""
    card: dict[str, Any] = agent_card_to_dict(agent_card(base_url))
    return card


class A2ARpc:
    """The JSON-RPC side of ``/api/v1/a2a``: one SDK dispatcher per app."""

    def __init__(self, container: Container, runtime: ProxyRuntime) -> None:
        handler = DefaultRequestHandler(
            agent_executor=GpuProxyExecutor(container, runtime),
            task_store=BoundedTaskStore(),
            agent_card=agent_card(container.settings.http.base_url),
        )
        self.dispatcher = JsonRpcDispatcher(
            handler, context_builder=PrincipalContextBuilder(), enable_v0_3_compat=True
        )

    async def respond(
        self, request: Request[Any, Any, Any], body: bytes, principal: Principal
    ) -> Response[Any]:
        """Answer one JSON-RPC request; streaming methods are refused (the card says so)."""
        message = decode(body)
        if isinstance(message, dict) and message.get("method") in STREAMING:
            error = JsonRpcError(code=-32004, message="Streaming is not supported by this agent")
            request_id = message.get("id")
            ok_id = isinstance(request_id, str | int) and not isinstance(request_id, bool)
            refused = JsonRpcResponse(jsonrpc="2.0", id=request_id if ok_id else None, error=error)
            return Response(refused)
        sent = False

        async def receive() -> AsgiMessage:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope: Any = {**request.scope, PRINCIPAL: principal}
        answer = await self.dispatcher.handle_requests(StarletteRequest(scope, receive))
        return Response(
            content=bytes(answer.body),
            status_code=answer.status_code,
            media_type=answer.media_type or JSON,
        )
