"""LangChain tool protocol: ``GET /api/v1/langchain/tools`` and ``POST /api/v1/langchain``.

Execute: ``{"input": {"action": "execute", "tool", "tool_input": {...}}}`` (or the flat
``{"tool", "tool_input"}``); ``{"input": {"action": "get_tools"}}`` lists the tools.
Answer: ``{output: {result: {tool, content}}, steps: [{action: {tool, tool_input, log},
observation}], metadata}``; a failed call has ``output.result.error`` ``{code, message}``, the
outcome's REST status, and is also an RFC 9457 problem (``error`` is the message).
"""

from __future__ import annotations

from typing import Any

from interfaces.agents.actions import ACTIONS, lookup
from interfaces.agents.wire import (
    Caller,
    MalformedMessageError,
    content_of,
    error_code,
    failure,
    need_object,
    now,
    refusal,
)


def tools() -> list[dict[str, Any]]:
    """Tool definitions in LangChain's shape: name, description, JSON Schema of the arguments."""
    return [
        {
            "name": a.name,
            "description": a.description,
            "parameters": a.schema(),
            "read_only": a.read_only,
        }
        for a in ACTIONS.values()
    ]


def _request(message: Any) -> tuple[str, Any, dict[str, Any]]:
    fields = need_object(message)
    source = need_object(fields["input"], "input") if "input" in fields else fields
    kind = source.get("action", "execute")
    if kind not in {"execute", "get_tools"}:
        raise MalformedMessageError(f"input.action must be execute or get_tools, not {kind!r}")
    tool = source.get("tool")
    if kind == "execute" and not isinstance(tool, str):
        raise MalformedMessageError("input.tool must name a tool (see GET /api/v1/langchain/tools)")
    return kind, tool, content_of(source, "tool_input")


async def handle(caller: Caller, message: Any) -> tuple[int, dict[str, Any]]:
    metadata = {"timestamp": now(), "user_id": caller.principal.user_id}
    tool: Any = None
    tool_input: dict[str, Any] = {}
    try:
        kind, tool, tool_input = _request(message)
        if kind == "get_tools":
            return 200, {"output": {"tools": tools()}, "steps": [], "metadata": metadata}
        tool = lookup(tool).name
        content = await caller.run(tool, tool_input)
    except Exception as exc:
        status, problem = failure(exc)
        error = {"code": error_code(problem), "message": problem["detail"]}
        result = {"tool": tool if isinstance(tool, str) else None, "error": error}
        reply = {"output": {"result": result}, "steps": [], "metadata": metadata}
        return status, refusal(problem, reply)
    step = {"action": {"tool": tool, "tool_input": tool_input, "log": f"Executing {tool}"}}
    return 200, {
        "output": {"result": {"tool": tool, "content": content}},
        "steps": [{**step, "observation": content}],
        "metadata": metadata,
    }
