"""The agent doors against a real ``aiserve-gpuproxyd``: the A2A SDK client (agent card,
message/send, tasks) and plain HTTP for the seed's A2A form, ACP, FIPA ACL, KQML, LangChain and
the auto-detecting /api/v1/agent; each protocol's refusals come back in its own form."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory, create_client
from a2a.helpers.proto_helpers import get_data_parts, new_data_part, new_text_part
from a2a.server.context import ServerCallContext
from a2a.types.a2a_pb2 import (
    AgentCard,
    GetTaskRequest,
    Message,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
)

from infrastructure.settings import load_settings
from interfaces.agents.a2a_rpc import BoundedTaskStore, PrincipalUser
from interfaces.agents.detect import UnknownProtocolError, detect
from interfaces.bootstrap import bootstrap
from tests.support.http import JWT_SECRET, env_of, server_process, test_client

USD = 1_000_000


@dataclass
class Server:
    url: str
    alice: str
    bob: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("agents")
    settings = load_settings({"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET}, env_file=None)
    c = bootstrap(settings)
    try:
        keys = []
        for name in ("alice", "bob"):
            user = c.users.create(f"{name}@example.com", "correct-horse-battery", name)
            c.ledger.grant(user.id, 50 * USD, key=f"seed-{name}")
            keys.append(c.auth.keys.create(user.id, "agents")[1])
    finally:
        c.close()
    env = {
        **env_of(settings),
        "SANDBOX_PROVISIONING_DELAY": "0",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "GRPC_ENABLED": "false",
    }
    with server_process(env, data / "server.log") as url:
        yield Server(url, keys[0], keys[1])


@pytest.fixture
def alice(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": server.alice}, timeout=30) as c:
        yield c


def _post(client: httpx.Client, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    """POST a message; an error reply must also be an RFC 9457 problem (the one error shape)."""
    response = (
        client.post(path, json=body)
        if not isinstance(body, bytes)
        else client.post(path, content=body, headers={"Content-Type": "application/json"})
    )
    reply = response.json()
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")
        assert {"type", "title", "status", "detail", "error"} <= set(reply)
        assert reply["status"] == response.status_code
    return response.status_code, reply


# ------------------------------------------------------------------ discovery and auth


def test_discovery_and_agent_card_are_public(server: Server) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        found = anonymous.get("/agent/discover").json()
        names = {p["name"] for p in found["protocols"]}
        assert {"mcp", "a2a", "a2a-simple", "acp", "fipa", "kqml", "langchain"} <= names
        assert found["endpoints"]["auto"] == "/api/v1/agent"
        assert "proxy_inference_request" in {a["name"] for a in found["capabilities"]}
        card = anonymous.get("/.well-known/agent-card.json")
        assert card.status_code == 200
        assert card.json()["url"] == f"{server.url}/api/v1/a2a"  # the 0.3 field, too


EVIL = {
    "Host": "evil.example",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "Forwarded": "host=evil.example;proto=https",
}


def test_public_documents_never_take_urls_from_request_headers(server: Server) -> None:
    """A forged ``Host`` must not end up in a (cacheable) discovery document."""
    with httpx.Client(base_url=server.url, headers=EVIL, timeout=30) as evil:
        for path in (
            "/.well-known/agent-card.json",
            "/agent/discover",
            "/schema/openapi.json",
            "/schema/swagger",
            "/schema/redoc",
            "/admin",
        ):
            answer = evil.get(path)
            assert answer.status_code == 200, path
            assert "evil.example" not in answer.text, path
        tools = evil.get("/api/v1/langchain/tools", headers={"X-API-Key": server.alice})
        assert tools.status_code == 200
        assert "evil.example" not in tools.text
        card = evil.get("/.well-known/agent-card.json")
        assert card.json()["url"] == f"{server.url}/api/v1/a2a"  # HOST:PORT, no PUBLIC_URL set
        assert card.headers["cache-control"] == "max-age=300, public"


def test_agent_card_urls_come_from_public_url(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "DATA_DIR": str(tmp_path),
            "JWT_SECRET": JWT_SECRET,
            "PUBLIC_URL": "https://gpu.example.com/",
        },
        env_file=None,
    )
    with test_client(settings) as client:
        card = client.get("/.well-known/agent-card.json", headers=EVIL).json()
    assert card["url"] == "https://gpu.example.com/api/v1/a2a"
    assert {i["url"] for i in card["supportedInterfaces"]} == {card["url"]}
    assert card["documentationUrl"] == "https://gpu.example.com/agent/discover"
    assert card["provider"]["url"] == "https://gpu.example.com"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/a2a",
        "/api/v1/acp",
        "/api/v1/fipa",
        "/api/v1/kqml",
        "/api/v1/langchain",
        "/api/v1/agent",
    ],
)
def test_every_door_needs_credentials(server: Server, path: str) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        refused = anonymous.post(path, json={"action": "get_credits", "from_agent": "x"})
        assert refused.status_code == 401
        assert refused.json()["error"]
        assert anonymous.get("/api/v1/langchain/tools").status_code == 401
        bad = anonymous.post(path, json={}, headers={"X-API-Key": "wrong"})
        assert bad.status_code == 401
        bearer = {"Authorization": f"Bearer {server.alice}"}  # an API key as a Bearer token
        assert anonymous.post(path, json={}, headers=bearer).status_code == 400


# ------------------------------------------------------------------ A2A with the SDK


def _message(*parts: Any) -> SendMessageRequest:
    message = Message(role=Role.ROLE_USER, message_id=str(uuid.uuid4()), parts=list(parts))
    return SendMessageRequest(message=message)


async def _send(client: Any, request: SendMessageRequest) -> Task:
    tasks = [event.task async for event in client.send_message(request)]
    assert len(tasks) == 1
    task: Task = tasks[0]
    return task


def test_a2a_sdk_client_card_message_send_and_tasks(server: Server) -> None:
    async def scenario() -> None:
        headers = {"X-API-Key": server.alice}
        async with httpx.AsyncClient(headers=headers, timeout=30) as http:
            card = await A2ACardResolver(http, server.url).get_agent_card()
            assert {s.id for s in card.skills} >= {"get_credits", "proxy_inference_request"}
            config = ClientConfig(httpx_client=http, streaming=False)
            client = await create_client(server.url, client_config=config)
            try:
                done = await _send(client, _message(new_data_part({"action": "get_credits"})))
                assert done.status.state == TaskState.TASK_STATE_COMPLETED
                result = get_data_parts(done.artifacts[0].parts)[0]
                assert result["credits_total"] == "50.000000"
                again = await client.get_task(GetTaskRequest(id=done.id))
                assert again.status.state == TaskState.TASK_STATE_COMPLETED

                text = await _send(client, _message(new_text_part("list_rentals")))
                assert text.status.state == TaskState.TASK_STATE_COMPLETED

                refused = await _send(
                    client,
                    _message(
                        new_data_part(
                            {"action": "check_spending_limit", "parameters": {"estimated_cost": -5}}
                        )
                    ),
                )
                assert refused.status.state == TaskState.TASK_STATE_REJECTED
                note = refused.status.message.parts[0].text
                assert "greater than zero" in note
                unknown = await _send(client, _message(new_data_part({"action": "mine_bitcoin"})))
                assert unknown.status.state == TaskState.TASK_STATE_REJECTED
                assert "Unknown action" in unknown.status.message.parts[0].text
            finally:
                await client.close()

            legacy = AgentCard()
            legacy.CopyFrom(card)
            del legacy.supported_interfaces[0]  # keep only the 0.3 interface: message/send
            assert legacy.supported_interfaces[0].protocol_version == "0.3"
            old = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(legacy)
            try:
                task = await _send(old, _message(new_data_part({"action": "get_spending_info"})))
                assert task.status.state == TaskState.TASK_STATE_COMPLETED
            finally:
                await old.close()

    asyncio.run(scenario())


def test_a2a_jsonrpc_message_send_and_tasks_get_per_user(
    server: Server, alice: httpx.Client
) -> None:
    send = {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "message/send",
        "params": {
            "message": {
                "role": "user",
                "messageId": "m-1",
                "kind": "message",
                "parts": [{"kind": "data", "data": {"action": "get_credits"}}],
            }
        },
    }
    status, body = _post(alice, "/api/v1/a2a", send)
    assert status == 200
    task = body["result"]
    assert task["kind"] == "task"
    assert task["status"]["state"] == "completed"
    assert task["artifacts"][0]["parts"][0]["data"]["credits_total"] == "50.000000"
    get = {"jsonrpc": "2.0", "id": "2", "method": "tasks/get", "params": {"id": task["id"]}}
    assert _post(alice, "/api/v1/a2a", get)[1]["result"]["id"] == task["id"]
    with httpx.Client(base_url=alice.base_url, headers={"X-API-Key": server.bob}) as bob:
        stolen = _post(bob, "/api/v1/a2a", get)[1]
        assert stolen["error"]["code"] == -32001  # task not found: tasks are per user
    cancel = {"jsonrpc": "2.0", "id": "4", "method": "tasks/cancel", "params": {"id": task["id"]}}
    assert _post(alice, "/api/v1/a2a", cancel)[1]["error"]["code"] == -32002  # not cancelable
    stream = {**send, "method": "message/stream"}
    assert _post(alice, "/api/v1/a2a", stream)[1]["error"]["code"] == -32004  # no streaming
    unknown = _post(alice, "/api/v1/a2a", {"jsonrpc": "2.0", "id": 3, "method": "tasks/steal"})
    assert unknown[1]["error"]["code"] == -32601


# ------------------------------------------------------------------ the seed's A2A form


def test_a2a_simple_form(alice: httpx.Client) -> None:
    status, body = _post(
        alice,
        "/api/v1/a2a",
        {
            "action": "gpu.list",
            "from_agent": "me",
            "message_id": "q1",
            "parameters": {"provider": "sandbox", "limit": 2},
        },
    )
    assert status == 200
    assert body["status"] == "success"
    assert body["to_agent"] == "me"
    assert body["in_reply_to"] == "q1"
    assert body["data"]["count"] == 2
    assert (
        _post(alice, "/api/v1/a2a", {"action": "agent.ping", "from_agent": "me"})[1]["data"][
            "status"
        ]
        == "ok"
    )

    status, body = _post(alice, "/api/v1/a2a", {"action": "steal", "from_agent": "me"})
    assert (status, body["outcome"], body["code"]) == (400, "error", "UNKNOWN_ACTION")
    assert body["to_agent"] == "me"
    assert "Unknown action" in body["detail"]
    status, body = _post(
        alice,
        "/api/v1/a2a",
        {"action": "guardrails.check", "from_agent": "me", "parameters": {"estimated_cost": -1}},
    )
    assert (status, body["code"]) == (400, "INVALID_ARGUMENT")
    status, body = _post(
        alice,
        "/api/v1/a2a",
        {"action": "guardrails.check", "from_agent": "me", "parameters": {"estimated_cost": "NaN"}},
    )
    assert (status, body["code"]) == (400, "INVALID_AMOUNT")
    assert _post(alice, "/api/v1/a2a", {"action": "gpu.list"})[1]["code"] == ("MALFORMED_MESSAGE")
    status, body = _post(alice, "/api/v1/a2a", b"{nope")
    assert (status, body["code"]) == (400, "MALFORMED_MESSAGE")


# ------------------------------------------------------------------ ACP


def _acp(kind: str, payload: Any) -> dict[str, Any]:
    header = {"sender": "me", "message_type": kind, "message_id": "a1", "conversation_id": "c1"}
    return {"header": header, "payload": payload}


def test_acp(alice: httpx.Client) -> None:
    status, body = _post(
        alice, "/api/v1/acp", _acp("command", {"command": "gpu.list", "parameters": {"limit": 1}})
    )
    assert status == 200
    assert body["success"] is True
    assert body["header"]["in_reply_to"] == "a1"
    assert body["header"]["conversation_id"] == "c1"
    assert body["payload"]["count"] == 1
    assert _post(alice, "/api/v1/acp", _acp("query", {"query": "spending.current"}))[0] == 200
    assert _post(alice, "/api/v1/acp", _acp("event", {}))[1]["payload"]["acknowledged"] is True

    status, body = _post(
        alice,
        "/api/v1/acp",
        _acp("query", {"query": "gpu.create", "parameters": {"provider": "sandbox"}}),
    )
    assert status == 400
    assert body["header"]["message_type"] == "error"
    assert "cannot be asked as a query" in body["payload"]["message"]
    status, body = _post(
        alice,
        "/api/v1/acp",
        _acp("command", {"command": "guardrails.check", "parameters": {"estimated_cost": -3}}),
    )
    assert (status, body["success"], body["payload"]["error"]) == (
        400,
        False,
        "INVALID_ARGUMENT",
    )
    status, body = _post(alice, "/api/v1/acp", _acp("gossip", {}))
    assert (status, body["payload"]["error"]) == (400, "MALFORMED_MESSAGE")
    assert _post(alice, "/api/v1/acp", {"header": {"sender": "me"}})[0] == 400


# ------------------------------------------------------------------ FIPA ACL


def _fipa(performative: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {
        "performative": performative,
        "sender": {"name": "buyer"},
        "receiver": [{"name": "aiserve-gpuproxy"}],
        "content": content,
        "language": "json",
        "conversation-id": "conv-1",
        "reply-with": "r-1",
        **extra,
    }


def test_fipa_contract_net_request_and_queries(alice: httpx.Client) -> None:
    status, body = _post(alice, "/api/v1/fipa", _fipa("cfp", {"parameters": {"gpu_model": "4090"}}))
    assert (status, body["performative"]) == (200, "propose")
    assert body["in-reply-to"] == "r-1"
    assert body["conversation-id"] == "conv-1"
    assert body["receiver"] == [{"name": "buyer"}]
    offer = body["content"]["offers"][0]
    assert "4090" in offer["gpu_model"]

    accept = {"provider": offer["provider"], "offer_id": offer["id"]}
    status, body = _post(alice, "/api/v1/fipa", _fipa("accept-proposal", accept))
    assert (status, body["performative"]) == (200, "inform")
    gpu = body["content"]["result"]["instance"]
    assert gpu["state"] == "running"

    for _ in range(50):  # the rentals read model follows the rent within moments
        status, body = _post(alice, "/api/v1/fipa", _fipa("query-ref", {"query": "rentals"}))
        if gpu["id"] in {r["id"] for r in body["content"]["result"]["rentals"]}:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(body)
    status, body = _post(
        alice,
        "/api/v1/fipa",
        _fipa("query-if", {"condition": "spending-allowed", "parameters": {"estimated_cost": 1}}),
    )
    assert (body["performative"], body["content"]["value"]) == ("inform", True)
    status, body = _post(
        alice,
        "/api/v1/fipa",
        _fipa(
            "request", {"action": "destroy-gpu-instance", "parameters": {"instance_id": gpu["id"]}}
        ),
    )
    assert (status, body["performative"]) == (200, "inform")
    assert _post(alice, "/api/v1/fipa", _fipa("reject-proposal", {}))[1]["performative"] == "inform"


def test_fipa_refusals(alice: httpx.Client) -> None:
    status, body = _post(alice, "/api/v1/fipa", _fipa("request", {"action": "launch-missiles"}))
    assert (status, body["performative"]) == (400, "refuse")
    assert body["in-reply-to"] == "r-1"
    status, body = _post(
        alice,
        "/api/v1/fipa",
        _fipa("query-if", {"condition": "spending-allowed", "parameters": {"estimated_cost": -1}}),
    )
    assert (status, body["performative"]) == (400, "refuse")
    assert "greater than zero" in body["content"]["reason"]
    status, body = _post(alice, "/api/v1/fipa", _fipa("cfp", {"parameters": {"max_price": "0"}}))
    assert (status, body["performative"]) == (404, "refuse")
    status, body = _post(alice, "/api/v1/fipa", _fipa("subscribe", {"topic": "x"}))
    assert (status, body["performative"]) == (400, "not-understood")
    status, body = _post(alice, "/api/v1/fipa", _fipa("request", "not json"))
    assert (status, body["performative"]) == (400, "not-understood")
    status, body = _post(alice, "/api/v1/fipa", {"performative": "request", "sender": "plain"})
    assert (status, body["performative"]) == (400, "not-understood")
    status, body = _post(
        alice,
        "/api/v1/fipa",
        _fipa("request", {"action": "proxy", "parameters": {"model": "demo"}}),
    )
    assert (status, body["performative"]) == (400, "refuse")  # neither instance nor URL
    status, body = _post(
        alice,
        "/api/v1/fipa",
        _fipa(
            "request",
            {"action": "proxy", "parameters": {"instance_id": str(uuid.uuid4()), "model": "demo"}},
        ),
    )
    assert body["performative"] in {"refuse", "failure"}


# ------------------------------------------------------------------ KQML


def _kqml(performative: str, content: Any) -> dict[str, Any]:
    return {
        "performative": performative,
        "sender": "planner",
        "receiver": "aiserve-gpuproxy",
        "reply-with": "k-1",
        "language": "json",
        "content": content,
    }


def test_kqml(alice: httpx.Client) -> None:
    status, body = _post(alice, "/api/v1/kqml", _kqml("ask-one", {"query": "gpu-instances"}))
    assert (status, body["performative"], body["in-reply-to"]) == (200, "tell", "k-1")
    cheapest = body["content"]["result"]
    status, body = _post(alice, "/api/v1/kqml", _kqml("ask-all", {"query": "gpu-instances"}))
    assert body["content"]["result"]["offers"][0] == cheapest
    status, body = _post(
        alice,
        "/api/v1/kqml",
        _kqml("ask-if", {"query": "check_spending_limit", "parameters": {"estimated_cost": "2"}}),
    )
    assert body["content"]["value"] is True
    status, body = _post(
        alice, "/api/v1/kqml", _kqml("tell", {"fact": "lb-strategy", "value": "least_connections"})
    )
    assert (status, body["performative"]) == (200, "tell")
    assert (
        _post(alice, "/api/v1/kqml", _kqml("ask-one", {"query": "lb-strategy"}))[1]["content"][
            "result"
        ]["strategy"]
        == "least_connections"
    )
    goal = {
        "goal": "create-gpu-instance",
        "parameters": {"provider": cheapest["provider"], "offer_id": cheapest["id"]},
    }
    status, body = _post(alice, "/api/v1/kqml", _kqml("achieve", goal))
    assert (status, body["performative"]) == (200, "tell")
    gpu = body["content"]["result"]["instance"]
    destroy = {"goal": "destroy-gpu-instance", "parameters": {"instance_id": gpu["id"]}}
    assert _post(alice, "/api/v1/kqml", _kqml("achieve", destroy))[0] == 200


def test_kqml_refusals(alice: httpx.Client) -> None:
    status, body = _post(alice, "/api/v1/kqml", _kqml("ask-one", {"query": "secrets"}))
    assert (status, body["performative"]) == (400, "sorry")
    status, body = _post(
        alice,
        "/api/v1/kqml",
        _kqml("ask-all", {"query": "create-gpu-instance", "parameters": {}}),
    )
    assert (status, body["performative"]) == (400, "sorry")  # asks never change anything
    status, body = _post(
        alice,
        "/api/v1/kqml",
        _kqml("ask-if", {"query": "check_spending_limit", "parameters": {"estimated_cost": -2}}),
    )
    assert (status, body["performative"]) == (400, "sorry")
    status, body = _post(
        alice,
        "/api/v1/kqml",
        _kqml(
            "ask-if",
            {"query": "check_spending_limit", "parameters": {"estimated_cost": "-Infinity"}},
        ),
    )
    assert (status, body["performative"]) == (400, "sorry")
    status, body = _post(
        alice, "/api/v1/kqml", _kqml("tell", {"fact": "record-spending", "value": -100})
    )
    assert (status, body["performative"]) == (400, "sorry")
    status, body = _post(alice, "/api/v1/kqml", _kqml("broadcast", {}))
    assert (status, body["performative"]) == (400, "error")
    status, body = _post(alice, "/api/v1/kqml", b"(ask-one :content x")
    assert (status, body["performative"]) == (400, "error")


# ------------------------------------------------------------------ LangChain


def test_langchain_tools_and_execute(alice: httpx.Client) -> None:
    tools = alice.get("/api/v1/langchain/tools").json()["tools"]
    by_name = {t["name"]: t for t in tools}
    assert by_name["check_spending_limit"]["parameters"]["required"] == ["estimated_cost"]
    status, body = _post(
        alice,
        "/api/v1/langchain",
        {"input": {"action": "execute", "tool": "get_credits", "tool_input": {}}},
    )
    assert status == 200
    assert body["output"]["result"]["content"]["credits_total"] == "50.000000"
    assert body["steps"][0]["action"]["tool"] == "get_credits"
    listed = _post(alice, "/api/v1/langchain", {"input": {"action": "get_tools"}})[1]
    assert {t["name"] for t in listed["output"]["tools"]} == set(by_name)

    status, body = _post(alice, "/api/v1/langchain", {"tool": "nope", "tool_input": {}})
    assert status == 400
    assert "Unknown action" in body["error"]
    status, body = _post(
        alice,
        "/api/v1/langchain",
        {"input": {"tool": "check_spending_limit", "tool_input": {"estimated_cost": -1}}},
    )
    assert status == 400
    assert body["output"]["result"]["error"]["code"] == "INVALID_ARGUMENT"
    status, body = _post(alice, "/api/v1/langchain", {"input": {"action": "dance"}})
    assert status == 400


# ------------------------------------------------------------------ auto-detection


SAMPLES = {
    "a2a": {"action": "billing.credits", "from_agent": "me", "parameters": {}},
    "acp": _acp("query", {"query": "billing.credits"}),
    "fipa": _fipa("query-ref", {"query": "credits"}),
    "kqml": _kqml("ask-all", {"query": "credits"}),
    "langchain": {"input": {"tool": "get_credits", "tool_input": {}}},
    "a2a-jsonrpc": {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "message/send",
        "params": {
            "message": {
                "role": "user",
                "messageId": "d1",
                "kind": "message",
                "parts": [{"kind": "text", "text": "get_credits"}],
            }
        },
    },
}


@pytest.mark.parametrize("protocol", list(SAMPLES))
def test_agent_endpoint_detects_each_protocol(alice: httpx.Client, protocol: str) -> None:
    response = alice.post("/api/v1/agent", json=SAMPLES[protocol])
    assert response.status_code == 200, response.text
    assert response.headers["x-agent-protocol"] == protocol
    direct = alice.post(
        "/api/v1/a2a" if protocol.startswith("a2a") else f"/api/v1/{protocol}",
        json=SAMPLES[protocol],
    )
    assert set(direct.json()) == set(response.json())


def test_agent_endpoint_rules(alice: httpx.Client) -> None:
    mcp = alice.post(
        "/api/v1/agent",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        follow_redirects=False,
    )
    assert (mcp.status_code, mcp.headers["location"]) == (307, "/api/v1/mcp")
    both = {**SAMPLES["a2a"], **SAMPLES["kqml"]}
    status, body = _post(alice, "/api/v1/agent", both)
    assert status == 400
    assert "ambiguous" in body["error"]
    assert "a2a" in body["error"]
    status, body = _post(alice, "/api/v1/agent", {"hello": "world"})
    assert status == 400
    assert "unknown message shape" in body["error"]
    status, body = _post(alice, "/api/v1/agent", {"performative": "inform", "content": {}})
    assert status == 400
    assert "sender" in body["error"]
    assert _post(alice, "/api/v1/agent", [1, 2])[0] == 400
    assert _post(alice, "/api/v1/agent", b"not json")[0] == 400


@pytest.mark.parametrize(
    ("message", "protocol"),
    [
        ({"jsonrpc": "2.0", "method": "SendMessage"}, "a2a-jsonrpc"),
        ({"jsonrpc": "2.0", "method": "tasks/get"}, "a2a-jsonrpc"),
        ({"jsonrpc": "2.0", "method": "initialize"}, "mcp"),
        ({"action": "gpu.list", "from_agent": "x"}, "a2a"),
        ({"header": {"sender": "x", "message_type": "query"}, "payload": {}}, "acp"),
        ({"performative": "subscribe", "sender": {"name": "x"}}, "fipa"),  # any FIPA verb
        ({"performative": "ask-one", "sender": "x"}, "kqml"),
        ({"input": {"action": "get_tools"}}, "langchain"),
        ({"tool": "get_credits", "tool_input": {}}, "langchain"),
    ],
)
def test_detection_rules(message: dict[str, Any], protocol: str) -> None:
    assert detect(message) == protocol


@pytest.mark.parametrize(
    "message",
    [
        {"action": "gpu.list"},  # from_agent missing
        {"header": {"sender": "x"}},  # message_type missing
        {"performative": "ask-one"},  # no sender
        {"performative": "ask-one", "sender": 7},
        {"jsonrpc": "2.0", "method": "tools/list", "tool": "x"},  # MCP and LangChain
        [],
        "text",
    ],
)
def test_detection_refuses_unknown_and_ambiguous_shapes(message: Any) -> None:
    with pytest.raises(UnknownProtocolError) as refused:
        detect(message)
    assert refused.value.status == 400


def test_agent_doors_share_the_rate_limit(tmp_path: Path) -> None:
    settings = load_settings(
        {"DATA_DIR": str(tmp_path), "JWT_SECRET": JWT_SECRET, "RATE_LIMIT_PER_MINUTE": "4"},
        env_file=None,
    )
    with test_client(settings) as client:
        c = client.app.state.container
        user = c.users.create("rate@example.com", "correct-horse-battery", "Rate")
        key = {"X-API-Key": c.auth.keys.create(user.id, "rate")[1]}
        assert client.post("/api/v1/kqml", json=_kqml("ask", {"query": "credits"}), headers=key)
        assert client.post("/api/v1/fipa", json=_fipa("query-ref", {"query": "x"}), headers=key)
        assert client.get("/api/v1/langchain/tools", headers=key).status_code == 200
        mcp = client.post(
            "/api/v1/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={**key, "Accept": "application/json, text/event-stream"},
        )
        assert mcp.headers["x-ratelimit-remaining"] == "0"
        limited = client.post("/api/v1/agent", json=SAMPLES["langchain"], headers=key)
        assert limited.status_code == 429
        assert limited.headers["retry-after"]
        again = client.post(
            "/api/v1/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=key
        )
        assert again.status_code == 429


def test_a2a_task_store_keeps_each_users_newest_tasks() -> None:
    store = BoundedTaskStore(limit=2)
    alice = ServerCallContext(user=_Named("alice"))
    bob = ServerCallContext(user=_Named("bob"))

    async def scenario() -> None:
        for n in range(3):
            await store.save(Task(id=f"t{n}", context_id="c"), alice)
        await store.save(Task(id="b0", context_id="c"), bob)
        assert await store.get("t0", alice) is None
        assert (await store.get("t2", alice)) is not None
        assert await store.get("t2", bob) is None  # per user
        assert (await store.get("b0", bob)) is not None

    asyncio.run(scenario())


class _Named(PrincipalUser):
    def __init__(self, name: str) -> None:
        super().__init__(None)
        self.name = name

    @property
    def user_name(self) -> str:
        return self.name
