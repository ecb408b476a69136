"""FIPA ACL at ``/api/v1/fipa`` (JSON encoding of the ACL message, hyphenated keys).

Performatives served (content is a JSON object or JSON text):

- ``request`` ``{action, parameters}`` → ``inform {action, result}``
- ``query-ref`` ``{query, parameters}`` (read-only actions; ``agent-description``) → ``inform``
- ``query-if`` ``{condition, parameters}``: ``spending-allowed``, ``spending-limit-exceeded``
  (``estimated_cost``), ``gpu-available`` (catalog filters) → ``inform {condition, value}``
- ``cfp`` ``{parameters}`` (catalog filters) → ``propose {offers, action, terms}``
- ``accept-proposal`` ``{provider, offer_id, …}`` → rents it → ``inform``
- ``reject-proposal`` → ``inform {acknowledged}``

Failures: ``not-understood`` (malformed message, unsupported performative), ``refuse`` (unknown
action or query, invalid arguments, a refused request: 4xx), ``failure`` (the action failed:
5xx). Every answer carries ``in-reply-to`` (the request's ``reply-with``) and
``conversation-id``. ``agree`` is not sent: each request is answered with its outcome at once,
which the FIPA Request protocol allows. The HTTP status is the outcome's REST status, and a
failure reply is also an RFC 9457 problem (``type``, ``title``, ``status``, ``detail``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from interfaces.agents.actions import lookup
from interfaces.agents.base import UnknownActionError
from interfaces.agents.discovery import summary
from interfaces.agents.wire import (
    AGENT_NAME,
    ONTOLOGY,
    Caller,
    MalformedMessageError,
    NoAnswerError,
    content_of,
    echo,
    error_code,
    failure,
    need_object,
    new_id,
    refusal,
)

CATALOG = "list_gpu_instances"


class NotUnderstoodError(MalformedMessageError):
    """A well-formed message with a performative this agent does not handle."""


def _sender(message: Any) -> dict[str, Any]:
    sender = message.get("sender") if isinstance(message, dict) else None
    if not isinstance(sender, dict) or not isinstance(sender.get("name"), str):
        raise MalformedMessageError('sender must be an agent identifier {"name": ...}')
    return {"name": sender["name"][:200]}


def _params(content: dict[str, Any]) -> Any:
    return content.get("parameters", content.get("arguments", {}))


async def _query_if(caller: Caller, content: dict[str, Any]) -> dict[str, Any]:
    condition = str(content.get("condition", ""))
    params = _params(content)
    if condition in {"spending-allowed", "spending-limit-exceeded"}:
        result = await caller.run("check_spending_limit", params)
        value = result["allowed"] == (condition == "spending-allowed")
    elif condition == "gpu-available":
        result = await caller.run(CATALOG, params)
        value = result["count"] > 0
    else:
        raise UnknownActionError(
            f"unknown condition {condition[:60]!r}; use spending-allowed, "
            "spending-limit-exceeded or gpu-available"
        )
    return {"condition": condition, "value": value, "result": result}


Answer = tuple[str, Any]


async def _request(caller: Caller, content: dict[str, Any]) -> Answer:
    action = lookup(content.get("action")).name
    return "inform", {"action": action, "result": await caller.run(action, _params(content))}


async def _query_ref(caller: Caller, content: dict[str, Any]) -> Answer:
    query = content.get("query")
    if query in {"agent-description", "capabilities"}:
        return "inform", {"query": query, "result": summary()}
    result = await caller.run(query, _params(content), read_only=True)
    return "inform", {"query": query, "result": result}


async def _cfp(caller: Caller, content: dict[str, Any]) -> Answer:
    params = {"limit": 5, **need_object(_params(content), "parameters")}
    offers = (await caller.run(CATALOG, params))["offers"]
    if not offers:
        raise NoAnswerError("no offer matches these terms")
    terms = "price_per_hour is charged per second while running, from your credits"
    return "propose", {"action": "create_gpu_instance", "offers": offers, "terms": terms}


async def _accept(caller: Caller, content: dict[str, Any]) -> Answer:
    result = await caller.run("create_gpu_instance", content.get("parameters", content))
    return "inform", {"action": "create_gpu_instance", "result": result}


async def _reject(_caller: Caller, _content: dict[str, Any]) -> Answer:
    return "inform", {"acknowledged": True}


async def _if(caller: Caller, content: dict[str, Any]) -> Answer:
    return "inform", await _query_if(caller, content)


PERFORMATIVES: dict[str, Callable[[Caller, dict[str, Any]], Awaitable[Answer]]] = {
    "request": _request,
    "query-ref": _query_ref,
    "query-if": _if,
    "cfp": _cfp,
    "accept-proposal": _accept,
    "reject-proposal": _reject,
}


async def _answer(caller: Caller, performative: str, content: dict[str, Any]) -> Answer:
    respond = PERFORMATIVES.get(performative)
    if respond is None:
        raise NotUnderstoodError(
            f"performative {performative[:40]!r} is not supported; use {', '.join(PERFORMATIVES)}"
        )
    return await respond(caller, content)


def _reply(message: Any, performative: str, content: Any) -> dict[str, Any]:
    sender = echo(message.get("sender") if isinstance(message, dict) else None, "name")
    return {
        "performative": performative,
        "sender": {"name": AGENT_NAME},
        "receiver": [{"name": sender}] if sender is not None else [],
        "content": content,
        "language": "json",
        "ontology": ONTOLOGY,
        "protocol": echo(message, "protocol"),
        "conversation-id": echo(message, "conversation-id") or new_id(),
        "in-reply-to": echo(message, "reply-with"),
    }


async def handle(caller: Caller, message: Any) -> tuple[int, dict[str, Any]]:
    performative = ""
    try:
        fields = need_object(message)
        _sender(fields)
        raw = fields.get("performative")
        if not isinstance(raw, str) or not raw.strip():
            raise MalformedMessageError("performative must be a non-empty string")
        performative = raw.strip().lower()
        kind, content = await _answer(caller, performative, content_of(fields))
    except Exception as exc:
        status, problem = failure(exc)
        content = {"reason": problem["detail"], "code": error_code(problem)}
        if isinstance(exc, MalformedMessageError):
            kind = "not-understood"
            content["performative"] = performative or None
        else:
            kind = "refuse" if status < 500 else "failure"
        return status, refusal(problem, _reply(message, kind, content))
    return 200, _reply(message, kind, content)
