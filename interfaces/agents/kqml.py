"""KQML at ``/api/v1/kqml``, JSON form: ``{performative, sender, reply-with?, content}``.

- ``ask-one`` / ``ask-all`` / ``ask`` ``{query, parameters}``: read-only actions → ``tell``;
  ``ask-one`` answers with the first item of a list (the cheapest offer, the newest rental).
- ``ask-if`` ``{query, parameters}`` → ``tell {query, value}``: whether the answer is non-empty
  (for ``check_spending_limit``: whether the spend is allowed).
- ``achieve`` ``{goal, parameters}``: any action → ``tell {goal, result}``.
- ``tell`` ``{fact: "lb-strategy", value}``: records the caller's load-balancing strategy.

Replies: ``tell`` (the answer), ``sorry`` (understood, but the action is unknown, refused or
failed) and ``error`` (malformed message or unsupported performative), with ``in-reply-to``
set from ``reply-with``. The HTTP status is the outcome's REST status; ``sorry`` and ``error``
replies are also RFC 9457 problems.
"""

from __future__ import annotations

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
    refusal,
    text,
)

ASKS = {"ask", "ask-one", "ask-all", "ask-if"}
FACTS = {"lb-strategy": ("set_lb_strategy", "strategy")}
SUPPORTED = ("ask-one", "ask-all", "ask", "ask-if", "tell", "achieve")


def _params(content: dict[str, Any]) -> Any:
    return content.get("parameters", content.get("arguments", {}))


async def _ask(caller: Caller, performative: str, content: dict[str, Any]) -> dict[str, Any]:
    query = content.get("query")
    if query in {"capabilities", "agent-description"}:
        return {"query": query, "result": summary()}
    action = lookup(query)
    result = await caller.run(action.name, _params(content), read_only=True)
    if performative == "ask-if":
        if "allowed" in result:
            value = bool(result["allowed"])
        else:
            value = bool(result[action.items]) if action.items else True
        return {"query": query, "value": value}
    if performative == "ask-one" and action.items is not None:
        items = result.get(action.items) or []
        if not items:
            raise NoAnswerError(f"no answer: {action.items} is empty")
        return {"query": query, "result": items[0]}
    return {"query": query, "result": result}


async def _answer(caller: Caller, performative: str, content: dict[str, Any]) -> dict[str, Any]:
    if performative in ASKS:
        return await _ask(caller, performative, content)
    if performative == "achieve":
        goal = lookup(content.get("goal", content.get("action"))).name
        return {"goal": goal, "result": await caller.run(goal, _params(content))}
    if performative == "tell":
        fact = content.get("fact")
        if fact not in FACTS:
            raise UnknownActionError(f"unknown fact {str(fact)[:60]!r}; known: {', '.join(FACTS)}")
        action, argument = FACTS[fact]
        result = await caller.run(action, {argument: content.get("value")})
        return {"fact": fact, "acknowledged": True, "result": result}
    raise MalformedMessageError(
        f"performative {performative[:40]!r} is not supported; use {', '.join(SUPPORTED)}"
    )


def _reply(message: Any, performative: str, content: Any) -> dict[str, Any]:
    return {
        "performative": performative,
        "sender": AGENT_NAME,
        "receiver": echo(message, "sender"),
        "in-reply-to": echo(message, "reply-with"),
        "language": "json",
        "ontology": ONTOLOGY,
        "content": content,
    }


async def handle(caller: Caller, message: Any) -> tuple[int, dict[str, Any]]:
    try:
        fields = need_object(message)
        text(fields, "sender", required=True)
        performative = (text(fields, "performative", required=True) or "").strip().lower()
        content = await _answer(caller, performative, content_of(fields))
    except Exception as exc:
        status, problem = failure(exc)
        kind = "error" if isinstance(exc, MalformedMessageError) else "sorry"
        content = {"reason": problem["detail"], "code": error_code(problem)}
        return status, refusal(problem, _reply(message, kind, content))
    return 200, _reply(message, "tell", content)
