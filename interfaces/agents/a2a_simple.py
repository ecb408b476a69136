"""The seed's A2A form: ``{"action", "from_agent", "parameters", "message_id"?}``.

Reply: ``{version, message_id, in_reply_to, from_agent, to_agent, status: "success", data,
timestamp}``. A refusal carries the same envelope with ``outcome: "error"`` and ``code``
(``UNKNOWN_ACTION``, ``INVALID_ARGUMENT``, ``INVALID_AMOUNT``, ``MALFORMED_MESSAGE``, …) and is
also an RFC 9457 problem (``status`` is then the HTTP status, ``detail``/``error`` the reason).
``agent.ping`` and ``agent.discover`` answer without touching a service.
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


def _reply(message: Any, **body: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "message_id": new_id(),
        "in_reply_to": echo(message, "message_id"),
        "from_agent": AGENT_NAME,
        "to_agent": echo(message, "from_agent"),
        **body,
        "timestamp": now(),
    }


async def _data(caller: Caller, message: dict[str, Any]) -> dict[str, Any]:
    action = text(message, "action", required=True)
    text(message, "from_agent", required=True)
    if action == "agent.ping":
        return {"status": "ok", "agent": AGENT_NAME, "timestamp": now()}
    if action in {"agent.discover", "agent.capabilities"}:
        return summary()
    parameters = message.get("parameters", {})
    if not isinstance(parameters, dict):
        raise MalformedMessageError("parameters must be a JSON object", field="parameters")
    return await caller.run(action, parameters)


async def handle(caller: Caller, message: Any) -> tuple[int, dict[str, Any]]:
    try:
        data = await _data(caller, need_object(message))
    except Exception as exc:
        status, problem = failure(exc)
        return status, refusal(problem, _reply(message, outcome="error", code=error_code(problem)))
    return 200, _reply(message, status="success", outcome="success", data=data)
