"""``GET /agent/discover``: which agent protocols this server speaks, where, and what it can do."""

from __future__ import annotations

from typing import Any

import msgspec
from mcp_types.version import KNOWN_PROTOCOL_VERSIONS

from interfaces.agents.actions import describe
from interfaces.presenters.agents import ActionInfo, Authentication, Discovery, ProtocolInfo

VERSION = "1.0.0"

PROTOCOLS: list[ProtocolInfo] = [
    ProtocolInfo(
        name="mcp",
        title="Model Context Protocol (Streamable HTTP)",
        endpoint="/api/v1/mcp",
        versions=list(KNOWN_PROTOCOL_VERSIONS),
        detect='"jsonrpc": "2.0" with any method that is not an A2A method',
    ),
    ProtocolInfo(
        name="a2a",
        title="Agent2Agent (JSON-RPC: message/send, tasks/get, tasks/cancel; A2A 1.0 and 0.3)",
        endpoint="/api/v1/a2a",
        agent_card="/.well-known/agent-card.json",
        detect='"jsonrpc": "2.0" with an A2A method (message/send, tasks/get, SendMessage, …)',
    ),
    ProtocolInfo(
        name="a2a-simple",
        title="A2A simple form {action, from_agent, parameters}",
        endpoint="/api/v1/a2a",
        detect="both action and from_agent",
    ),
    ProtocolInfo(
        name="acp",
        title="Agent Communications Protocol {header: {sender, message_type}, payload}",
        endpoint="/api/v1/acp",
        detect="header is an object with sender and message_type",
    ),
    ProtocolInfo(
        name="fipa",
        title="FIPA ACL (request, query-ref, query-if, cfp, accept-proposal, reject-proposal)",
        endpoint="/api/v1/fipa",
        detect="performative with sender as an object {name}",
    ),
    ProtocolInfo(
        name="kqml",
        title="KQML (ask-one, ask-all, ask-if, tell, achieve)",
        endpoint="/api/v1/kqml",
        detect="performative with sender as a string",
    ),
    ProtocolInfo(
        name="langchain",
        title="LangChain tools",
        endpoint="/api/v1/langchain",
        tools="/api/v1/langchain/tools",
        detect="input is an object with tool or action (or top-level tool)",
    ),
]


def discover_document() -> Discovery:
    return Discovery(
        id="aiserve-gpuproxy",
        name="GPU Proxy",
        version=VERSION,
        description=(
            "Rent GPUs across marketplaces on one prepaid credit balance, watch spending, "
            "and send inference requests to your instances."
        ),
        protocols=PROTOCOLS,
        endpoints={p.name: p.endpoint for p in PROTOCOLS}
        | {"auto": "/api/v1/agent", "discover": "/agent/discover"},
        authentication=Authentication(
            schemes=["X-API-Key header", "Authorization: Bearer <JWT or API key>"],
            public=["/agent/discover", "/.well-known/agent-card.json"],
        ),
        capabilities=msgspec.convert(describe(), list[ActionInfo]),
    )


def summary() -> dict[str, Any]:
    """A short self-description for protocol-level 'who are you' questions."""
    return {
        "agent": "aiserve-gpuproxy",
        "version": VERSION,
        "actions": [
            {"name": a["name"], "description": a["description"], "read_only": a["read_only"]}
            for a in describe()
        ],
    }
