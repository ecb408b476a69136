"""The typed answers of issue 22's last part describe their bodies exactly (ADR 0025).

Each body decodes into the Struct its operation documents and encodes back to the same JSON,
so no member is missing from the type (the dashboard views) or unknown to it (agent replies
forbid unknown fields). The wire shapes the dashboard JS and agent clients read are pinned:
nulls, absent members, 6-decimal money strings, hyphenated FIPA/KQML keys, camelCase card.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from infrastructure.settings import load_settings
from interfaces.presenters import agents, dashboard
from tests.integration.test_ws import grant, make_user
from tests.support.http import JWT_SECRET, test_client
from tests.support.pg import Cluster


@pytest.fixture(scope="module")
def client(pg_cluster: Cluster) -> Iterator[TestClient[Any]]:
    name = pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
    env = {
        **pg_cluster.env(name),
        "JWT_SECRET": JWT_SECRET,
        "GUARDRAILS_ENABLED": "true",
        "SANDBOX_PROVIDER_ENABLED": "true",
        "SANDBOX_PROVISIONING_DELAY": "0",
        "RATE_LIMIT_PER_MINUTE": "100000",
    }
    with test_client(load_settings(env, env_file=None)) as c:
        yield c


def exactly(body: bytes, kind: Any) -> Any:
    """``body`` as ``kind``, after checking the type keeps every member and value."""
    decoded = msgspec.json.decode(body, type=kind)
    assert msgspec.to_builtins(decoded) == msgspec.json.decode(body)
    return decoded


def test_admin_dashboard_views(client: TestClient[Any]) -> None:
    c = client.app.state.container
    boss, alice = make_user(c, "chief", admin=True), make_user(c, "alice")
    grant(c, alice, 50)
    never = c.users.create(f"never-{uuid.uuid4().hex[:6]}@example.com", "pw-0123456789xyz", "N")
    with c.db.transaction() as tx:  # the load table's read model: one busy row, one idle row
        tx.execute(
            "INSERT INTO proxy_load_g1 (instance_id, owner, provider, requests, errors, "
            "latency_ms_sum, last_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("i-busy", alice.user_id, "sandbox", 3, 1, 100, 1_765_000_000_000_000),
        )
        tx.execute(
            "INSERT INTO proxy_load_g1 (instance_id, owner, provider) VALUES (?, ?, ?)",
            ("i-idle", "nobody", "vastai"),
        )
    reserved = client.post(
        "/api/v1/gpu/instances/reserve",
        json={"count": 1, "gpu_model": "4090", "provider": "sandbox"},
        headers={"X-API-Key": alice.key},
    )
    assert reserved.status_code == 201, reserved.text
    c.runner.catch_up()
    boss_key = {"X-API-Key": boss.key}

    def get(path: str, kind: Any) -> Any:
        answer = client.get(path, headers=boss_key)
        assert answer.status_code == 200, (path, answer.text)
        return exactly(answer.content, kind)

    found = get("/api/v1/admin/search/users?q=alice", dashboard.UserSearch)
    assert [(u.id, u.credits_remaining, u.credits_held) for u in found.users] == [
        (alice.user_id, "50.000000", "0.350000")
    ]

    account = get(f"/api/v1/admin/users/{alice.user_id}/account", dashboard.AdminAccount)
    assert account.credits.credits_remaining == "50.000000"
    assert account.credits.credits_held == account.spending.held == "0.350000"
    assert [h.amount for h in account.holds] == ["0.350000"]
    assert msgspec.to_builtins(account.auto_renew) == {
        "enabled": False,
        "threshold": "0.000000",
        "amount": "0.000000",
    }
    bare = client.get(f"/api/v1/admin/users/{never.id}/account", headers=boss_key).json()
    assert set(bare) == {"user", "credits", "spending"}  # never opened: nulls, nothing else
    assert bare["credits"] is None
    assert bare["spending"] is None

    listed = get("/api/v1/admin/reservations", dashboard.ReservationList)
    assert listed.count == 1
    assert listed.reservations[0].owner == alice.user_id
    assert listed.reservations[0].held == "0.350000"

    table = client.get("/api/v1/admin/load", headers=boss_key)
    exactly(table.content, dashboard.LoadTable)
    rows = {r["instance_id"]: r for r in table.json()["instances"]}
    assert rows["i-busy"]["mean_latency_ms"] == 33.333
    assert rows["i-busy"]["owner_email"] == alice.email
    assert rows["i-idle"]["mean_latency_ms"] is None
    assert rows["i-idle"]["last_at"] is None
    assert rows["i-idle"]["owner_email"] is None
    assert rows["i-idle"]["state"] is None

    health = client.get("/api/v1/admin/providers", headers=boss_key)
    exactly(health.content, dashboard.ProviderList)
    sandbox = next(p for p in health.json()["providers"] if p["name"] == "sandbox")
    assert sandbox["healthy"] is True
    assert "error" not in sandbox
    assert sum(sandbox["instances"].values()) == 1

    progress = get("/api/v1/admin/projections", dashboard.Projections)
    assert set(progress.lag) == set(progress.positions)


def _post(client: TestClient[Any], key: str, path: str, message: dict[str, Any]) -> bytes:
    answer = client.post(path, json=message, headers={"X-API-Key": key})
    assert answer.status_code == 200, (path, answer.text)
    assert answer.headers["content-type"].startswith("application/json")
    return answer.content


def test_agent_documents_and_replies(client: TestClient[Any]) -> None:
    c = client.app.state.container
    key = make_user(c, "agent").key

    card = client.get("/.well-known/agent-card.json")
    exactly(card.content, agents.AgentCard)
    assert {"supportedInterfaces", "documentationUrl", "preferredTransport"} <= set(card.json())
    found = exactly(client.get("/agent/discover").content, agents.Discovery)
    assert {p.name for p in found.protocols} >= {"mcp", "a2a", "acp", "fipa", "kqml"}
    tools = client.get("/api/v1/langchain/tools", headers={"X-API-Key": key}).content
    assert exactly(tools, agents.LangchainTools).tools

    ping = {"action": "agent.ping", "from_agent": "me", "message_id": "q1"}
    simple = exactly(_post(client, key, "/api/v1/a2a", ping), agents.A2AReply)
    assert (simple.in_reply_to, simple.data["status"]) == ("q1", "ok")
    stream = {"jsonrpc": "2.0", "id": 2, "method": "message/stream", "params": {}}
    refused = exactly(_post(client, key, "/api/v1/a2a", stream), agents.JsonRpcResponse)
    assert refused.error is not None
    assert refused.error.code == -32004
    header = {"sender": "me", "message_type": "query", "message_id": "a1"}
    acp = {"header": header, "payload": {"query": "get_credits"}}
    acp_reply = exactly(_post(client, key, "/api/v1/acp", acp), agents.AcpReply)
    assert acp_reply.payload["credits_remaining"] == "0.000000"
    assert acp_reply.header.in_reply_to == "a1"
    query = {"query": "get_credits"}
    fipa = {"performative": "query-ref", "sender": {"name": "me"}, "content": query}
    fipa_body = _post(client, key, "/api/v1/fipa", fipa)
    assert exactly(fipa_body, agents.FipaReply).performative == "inform"
    assert msgspec.json.decode(fipa_body)["in-reply-to"] is None
    kqml = {"performative": "ask-one", "sender": "me", "reply-with": "k1", "content": query}
    kqml_body = _post(client, key, "/api/v1/kqml", kqml)
    assert exactly(kqml_body, agents.KqmlReply).in_reply_to == "k1"
    execute = {"input": {"action": "execute", "tool": "get_credits", "tool_input": {}}}
    chain = exactly(_post(client, key, "/api/v1/langchain", execute), agents.LangchainReply)
    assert chain.output.result is not None
    assert chain.output.tools is None
    listing = {"input": {"action": "get_tools"}}
    chain = exactly(_post(client, key, "/api/v1/langchain", listing), agents.LangchainReply)
    assert chain.output.result is None
    assert chain.output.tools
    detected = _post(client, key, "/api/v1/agent", {**kqml, "reply-with": "k2"})
    assert exactly(detected, agents.KqmlReply).in_reply_to == "k2"
