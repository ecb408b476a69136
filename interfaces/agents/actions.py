"""The one action registry every agent door uses (MCP, A2A, ACP, FIPA ACL, KQML, LangChain).

``ACTIONS`` maps each name to an ``Action`` (JSON Schema + async handler); ``lookup`` also
resolves the protocol vocabularies' aliases (``gpu.list``, ``gpu-instances``, …). ``execute``
validates the arguments and runs the handler; ``problem_of`` turns any error into the REST
error body (RFC 9457 + ``error``), which each protocol module wraps in its own reply form.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from domain.errors import DomainError
from interfaces.agents import billing_actions, gpu_actions, proxy_actions
from interfaces.agents.base import Action, Result, UnknownActionError
from interfaces.http.errors import on_domain_error, problem_body

if TYPE_CHECKING:
    from infrastructure.identity.auth import Principal
    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

log = logging.getLogger(__name__)

ACTIONS: dict[str, Action] = {
    a.name: a for a in (*gpu_actions.ACTIONS, *billing_actions.ACTIONS, *proxy_actions.ACTIONS)
}
_ALIASES: dict[str, Action] = {
    key: action
    for action in ACTIONS.values()
    for key in (action.name, action.name.replace("_", "-"), *action.aliases)
}


def lookup(name: Any) -> Action:
    """The action called ``name`` (its own name or an alias, case-insensitive)."""
    key = name.strip().lower() if isinstance(name, str) else ""
    found = _ALIASES.get(key)
    if found is None:
        shown = repr(name)[:60] if name is not None else "nothing"
        raise UnknownActionError(
            f"Unknown action {shown}; known: {', '.join(ACTIONS)}", action=str(name)[:60]
        )
    return found


async def execute(
    c: Container,
    rt: ProxyRuntime,
    principal: Principal,
    name: Any,
    args: Mapping[str, Any] | None,
    *,
    read_only: bool = False,
) -> Result:
    """Validate ``args`` and run the action; ``read_only`` refuses actions that change things."""
    action = lookup(name)
    if read_only and not action.read_only:
        raise UnknownActionError(
            f"{action.name} changes state and cannot be asked as a query", action=action.name
        )
    return await action.handler(c, rt, principal, action.parse(args))


def problem_of(exc: BaseException) -> dict[str, Any]:
    """The REST problem body for an error (500 without detail for unexpected ones)."""
    if isinstance(exc, DomainError):
        body: dict[str, Any] = on_domain_error(None, exc).content  # type: ignore[arg-type]
        return body
    log.error("agent action failed: %s", type(exc).__name__, exc_info=exc)
    return problem_body(500, "", "Internal server error")


def describe() -> list[dict[str, Any]]:
    """Every action with its schema, for discovery documents and tool lists."""
    return [
        {
            "name": a.name,
            "description": a.description,
            "parameters": a.schema(),
            "read_only": a.read_only,
            "aliases": list(a.aliases),
        }
        for a in ACTIONS.values()
    ]
