"""ACP (the seed's Agent Communications Protocol envelope) at ``/api/v1/acp``.

Request: ``{header: {sender, message_type, message_id?, conversation_id?, recipient?}, payload}``.
``request``/``command``: ``payload.command`` + ``payload.parameters`` (any action);
``query``: ``payload.query`` + ``payload.parameters`` (read-only actions, or ``capabilities``);
``notification``/``event``: acknowledged. Reply: ``{header (message_type response|error,
in_reply_to), payload, status, success}`` where ``status`` is the HTTP status; an error reply's
payload is ``{error: CODE, message}`` and the reply is also an RFC 9457 problem.
"""

from __future__ import annotations

from typing import Any

from interfaces.agents.discovery import summary
from interfaces.agents.wire import (
    AGENT_NAME,
    Caller,
    MalformedMessageError,
    echo,
    error_code,
    failure,
    need_object,
    new_id,
    now,
    refusal,
    text,
)

COMMANDS = {"request", "command"}
NOTICES = {"notification", "event"}


def _header(message: Any, kind: str) -> dict[str, Any]:
    header = message.get("header") if isinstance(message, dict) else None
    return {
        "version": "1.0",
        "message_id": new_id(),
        "conversation_id": echo(header, "conversation_id") or new_id(),
        "in_reply_to": echo(header, "message_id"),
        "sender": AGENT_NAME,
        "recipient": echo(header, "sender"),
        "message_type": kind,
        "timestamp": now(),
    }


async def _payload(caller: Caller, message: dict[str, Any]) -> dict[str, Any]:
    header = need_object(message.get("header"), "header")
    text(header, "sender", required=True)
    kind = (text(header, "message_type", required=True) or "").lower()
    payload = need_object(message.get("payload", {}), "payload")
    if kind in NOTICES:
        return {"acknowledged": True, "message_id": echo(header, "message_id")}
    parameters = payload.get("parameters", {})
    if kind in COMMANDS:
        return await caller.run(text(payload, "command", required=True), parameters)
    if kind == "query":
        query = text(payload, "query", required=True)
        if query == "capabilities":
            return summary()
        return await caller.run(query, parameters, read_only=True)
    known = ", ".join(sorted(COMMANDS | NOTICES | {"query"}))
    raise MalformedMessageError(
        f"unknown message_type {kind[:40]!r}; use one of {known}", field="message_type"
    )


async def handle(caller: Caller, message: Any) -> tuple[int, dict[str, Any]]:
    try:
        payload = await _payload(caller, need_object(message))
    except Exception as exc:
        code, problem = failure(exc)
        error = {"error": error_code(problem), "message": problem["detail"]}
        reply = {"header": _header(message, "error"), "payload": error, "success": False}
        return code, refusal(problem, reply)
    reply = {"header": _header(message, "response"), "payload": payload, "status": 200}
    return 200, {**reply, "success": True}
