"""Agent protocol documents and replies (``interfaces/agents/``): discovery, the A2A agent card,
LangChain tool definitions, and the success reply of each protocol door.

The envelopes are typed; what an action answers is open (``dict``): its shape is the action's
own and each action's argument schema is in the discovery document's ``capabilities``. Reply
Structs forbid unknown fields, so a reply that grows a member the type does not show fails
instead of being documented wrong. Error replies are RFC 9457 problems (``Problem``).
"""

from __future__ import annotations

from typing import Any

from msgspec import Struct, field


class Envelope(Struct, forbid_unknown_fields=True):
    """A protocol's own reply: every member is shown here."""


# ------------------------------------------------------------------ documents


class ActionInfo(Struct):
    """One action every agent door offers; ``parameters`` is its JSON Schema (2020-12)."""

    name: str
    description: str
    parameters: dict[str, Any]
    read_only: bool
    aliases: list[str]


class ProtocolInfo(Struct, kw_only=True, omit_defaults=True):
    """A protocol spoken here, where, and how ``POST /api/v1/agent`` recognises it."""

    name: str
    title: str
    endpoint: str
    versions: list[str] | None = None
    agent_card: str | None = None
    tools: str | None = None
    detect: str


class Authentication(Struct):
    schemes: list[str]
    public: list[str]


class Discovery(Struct):
    """``GET /agent/discover``: protocols, endpoints and the actions with their schemas."""

    id: str
    name: str
    version: str
    description: str
    protocols: list[ProtocolInfo]
    endpoints: dict[str, str]
    authentication: Authentication
    capabilities: list[ActionInfo]


class ToolInfo(Struct):
    """A LangChain tool: ``parameters`` is the JSON Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]
    read_only: bool


class LangchainTools(Struct):
    tools: list[ToolInfo]


class AgentInterface(Envelope, rename="camel"):
    url: str
    protocol_binding: str
    protocol_version: str


class AgentProvider(Envelope):
    url: str
    organization: str


class AgentCapabilities(Envelope, rename="camel"):
    streaming: bool
    push_notifications: bool


class SecurityRequirement(Envelope):
    """A2A 1.0: scheme name to its scopes (``{}`` or ``{"list": [...]}``)."""

    schemes: dict[str, dict[str, Any]]


class AgentSkill(Envelope):
    id: str
    name: str
    description: str
    tags: list[str]
    examples: list[str]


class AgentCard(Envelope, rename="camel"):
    """The A2A agent card as the a2a-sdk writes it: A2A 1.0 members plus the 0.3 ones
    (``url``, ``preferredTransport``, ``protocolVersion``, ``security``). Each security scheme
    carries both forms (``apiKeySecurityScheme`` and ``type``/``in``/``name``), so its value is
    the A2A SecurityScheme object as is."""

    name: str
    description: str
    supported_interfaces: list[AgentInterface]
    provider: AgentProvider
    version: str
    documentation_url: str
    capabilities: AgentCapabilities
    security_schemes: dict[str, dict[str, Any]]
    security_requirements: list[SecurityRequirement]
    default_input_modes: list[str]
    default_output_modes: list[str]
    skills: list[AgentSkill]
    preferred_transport: str
    protocol_version: str
    security: list[dict[str, list[str]]]
    url: str


# ------------------------------------------------------------------ replies


class A2AReply(Envelope):
    """The A2A simple form's answer: ``data`` is what the action answered."""

    version: str
    message_id: str
    in_reply_to: str | None
    from_agent: str
    to_agent: str | None
    status: str
    outcome: str
    data: dict[str, Any]
    timestamp: str


class JsonRpcError(Struct, omit_defaults=True):
    code: int
    message: str
    data: Any = None


class JsonRpcResponse(Struct, omit_defaults=True):
    """A JSON-RPC 2.0 response (A2A over JSON-RPC, written by the a2a-sdk): ``result`` is the
    A2A Task or Message (the protocol's own shape), or ``error``."""

    jsonrpc: str
    id: str | int | None
    result: dict[str, Any] | None = None
    error: JsonRpcError | None = None


class AcpHeader(Envelope):
    version: str
    message_id: str
    conversation_id: str
    in_reply_to: str | None
    sender: str
    recipient: str | None
    message_type: str
    timestamp: str


class AcpReply(Envelope):
    """ACP ``response``: ``payload`` is the action's answer (or the acknowledgement);
    ``status`` is the HTTP status."""

    header: AcpHeader
    payload: dict[str, Any]
    status: int
    success: bool


class AgentName(Envelope):
    name: str


class FipaReply(Envelope):
    """FIPA ACL ``inform`` or ``propose``; ``content`` is the performative's answer
    (``{action, result}``, ``{query, result}``, ``{condition, value, result}``,
    ``{action, offers, terms}``, ``{acknowledged}``)."""

    performative: str
    sender: AgentName
    receiver: list[AgentName]
    content: dict[str, Any]
    language: str
    ontology: str
    protocol: str | None
    conversation_id: str = field(name="conversation-id")
    in_reply_to: str | None = field(name="in-reply-to")


class KqmlReply(Envelope):
    """KQML ``tell``; ``content`` is ``{query, result}``, ``{query, value}``,
    ``{goal, result}`` or ``{fact, acknowledged, result}``."""

    performative: str
    sender: str
    receiver: str | None
    in_reply_to: str | None = field(name="in-reply-to")
    language: str
    ontology: str
    content: dict[str, Any]


class ToolCall(Envelope):
    tool: str
    tool_input: dict[str, Any]
    log: str


class ToolStep(Envelope):
    action: ToolCall
    observation: dict[str, Any]


class ToolResult(Envelope):
    """The tool's answer (``content``, the action's own shape)."""

    tool: str
    content: dict[str, Any]


class LangchainOutput(Envelope, omit_defaults=True):
    """``result`` for an execute, ``tools`` for get_tools."""

    result: ToolResult | None = None
    tools: list[ToolInfo] | None = None


class LangchainMeta(Envelope):
    timestamp: str
    user_id: str


class LangchainReply(Envelope):
    output: LangchainOutput
    steps: list[ToolStep]
    metadata: LangchainMeta


AnyReply = A2AReply | JsonRpcResponse | AcpReply | FipaReply | KqmlReply | LangchainReply
