"""``POST /api/v1/agent``: which protocol a message speaks, from its shape alone.

Every rule below is checked; exactly one must match, else the message is refused with 400
(none: unknown shape; several: ambiguous, naming them).

1. ``jsonrpc`` key: an A2A method (``message/send``, ``tasks/get``, ``SendMessage``, …) →
   ``a2a-jsonrpc``; any other method → ``mcp`` (served at ``/api/v1/mcp``).
2. ``action`` and ``from_agent`` → ``a2a`` (the simple form).
3. ``header`` is an object with ``sender`` and ``message_type`` → ``acp``.
4. ``performative`` with ``sender`` an object → ``fipa``; with ``sender`` a string → ``kqml``.
5. ``input`` is an object with ``tool`` or ``action``, or a top-level ``tool`` → ``langchain``.
"""

from __future__ import annotations

from typing import Any

from interfaces.agents.wire import MalformedMessageError, Unparsed

A2A_METHODS = frozenset(
    {
        "message/send",
        "message/stream",
        "tasks/get",
        "tasks/cancel",
        "tasks/resubscribe",
        "tasks/pushNotificationConfig/set",
        "tasks/pushNotificationConfig/get",
        "tasks/pushNotificationConfig/list",
        "tasks/pushNotificationConfig/delete",
        "agent/getAuthenticatedExtendedCard",
        "SendMessage",
        "SendStreamingMessage",
        "GetTask",
        "ListTasks",
        "CancelTask",
        "SubscribeToTask",
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
        "GetExtendedAgentCard",
    }
)
SHAPES = (
    '{"jsonrpc": "2.0", "method", ...} (MCP or A2A JSON-RPC)',
    '{"action", "from_agent", "parameters"} (A2A)',
    '{"header": {"sender", "message_type"}, "payload"} (ACP)',
    '{"performative", "sender": {"name"}, "content"} (FIPA ACL)',
    '{"performative", "sender": "name", "content"} (KQML)',
    '{"input": {"tool", "tool_input"}} (LangChain)',
)


class UnknownProtocolError(MalformedMessageError):
    title = "Unknown or ambiguous protocol"


def _matches(m: dict[str, Any]) -> list[str]:
    found = []
    if "jsonrpc" in m:
        found.append("a2a-jsonrpc" if m.get("method") in A2A_METHODS else "mcp")
    if "action" in m and "from_agent" in m:
        found.append("a2a")
    header = m.get("header")
    if isinstance(header, dict) and "sender" in header and "message_type" in header:
        found.append("acp")
    if isinstance(m.get("performative"), str):
        sender = m.get("sender")
        if isinstance(sender, dict):
            found.append("fipa")
        elif isinstance(sender, str):
            found.append("kqml")
    source = m.get("input")
    if (isinstance(source, dict) and ("tool" in source or "action" in source)) or "tool" in m:
        found.append("langchain")
    return found


def detect(message: Any) -> str:
    """The protocol name, or ``UnknownProtocolError`` (400) saying why not."""
    if isinstance(message, Unparsed):
        raise message.error
    if not isinstance(message, dict):
        raise UnknownProtocolError("an agent message must be a JSON object")
    found = _matches(message)
    if len(found) == 1:
        return found[0]
    if found:
        raise UnknownProtocolError(
            f"ambiguous message: it matches {', '.join(found)}; post it to that protocol's "
            "own endpoint or remove the other protocol's keys",
            candidates=", ".join(found),
        )
    if isinstance(message.get("performative"), str):
        raise UnknownProtocolError(
            "performative given but sender is missing: FIPA needs sender {name}, KQML a string"
        )
    raise UnknownProtocolError("unknown message shape; expected one of: " + "; ".join(SHAPES))
