"""MCP at /api/v1/mcp against a real ``aiserve-gpuproxyd``, with the official MCP SDK client
(Streamable HTTP, both the initialize-handshake era and the 2026 per-request era) and through
the ``aiserve-gpuproxy-mcp`` stdio bridge."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from tests.support.http import JWT_SECRET, ROOT, env_of, server_process

USD = 1_000_000
TOOLS = {
    "list_gpu_instances",
    "create_gpu_instance",
    "destroy_gpu_instance",
    "reserve_gpus",
    "list_rentals",
    "get_credits",
    "get_spending_info",
    "check_spending_limit",
    "get_billing_transactions",
    "proxy_inference_request",
}
DEMO_INPUT = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}


@dataclass
class Server:
    url: str
    alice: str
    bob: str

    @property
    def mcp(self) -> str:
        return f"{self.url}/api/v1/mcp"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("mcp")
    settings = load_settings({"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET}, env_file=None)
    c = bootstrap(settings)
    try:
        keys = []
        for name, credits in (("alice", 100 * USD), ("bob", 5 * USD)):
            user = c.users.create(f"{name}@example.com", "correct-horse-battery", name)
            c.ledger.grant(user.id, credits, key=f"seed-{name}")
            keys.append(c.auth.keys.create(user.id, "mcp")[1])
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


async def _client(stack: AsyncExitStack, server: Server, key: str, mode: str) -> Client:
    http = await stack.enter_async_context(create_mcp_http_client(headers={"X-API-Key": key}))
    transport = streamable_http_client(server.mcp, http_client=http)
    return await stack.enter_async_context(Client(transport, mode=mode))


async def _call(client: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, args)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    assert result.content
    assert isinstance(result.content[0], types.TextContent)
    return result.structured_content


async def _error(client: Client, name: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(name, args)
    assert result.is_error, result.structured_content
    assert isinstance(result.content[0], types.TextContent)
    return result.content[0].text


async def _rental_ids(client: Client) -> set[str]:
    """The caller's rentals, once the read model has the newest one (it lags a moment)."""
    ids: set[str] = set()
    for _ in range(50):
        ids = {r["id"] for r in (await _call(client, "list_rentals", {}))["rentals"]}
        if ids:
            break
        await asyncio.sleep(0.1)
    return ids


async def _proxy(client: Client, instance_id: str) -> dict[str, Any]:
    args = {"instance_id": instance_id, "model": "demo", "body": DEMO_INPUT}
    for _ in range(50):  # the new instance reaches the proxy's read model within moments
        result = await client.call_tool("proxy_inference_request", args)
        if not result.is_error:
            assert isinstance(result.structured_content, dict)
            return result.structured_content
        await asyncio.sleep(0.1)
    raise AssertionError(result.content)


def test_handshake_session_tools_and_every_call(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            client = await _client(stack, server, server.alice, "legacy")
            assert client.server_info is not None
            assert client.server_info.name == "aiserve-gpuproxy"
            assert client.server_capabilities.tools is not None
            assert client.instructions
            assert "proxy_inference_request" in client.instructions
            assert await client.session.send_ping() is not None  # handshake-era ping

            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert set(listed) >= TOOLS
            for tool in listed.values():
                assert tool.input_schema["type"] == "object"
                assert tool.description
            assert set(listed["create_gpu_instance"].input_schema["required"]) == {
                "provider",
                "offer_id",
            }
            assert listed["get_credits"].annotations is not None
            assert listed["get_credits"].annotations.read_only_hint is True

            offers = await _call(
                client, "list_gpu_instances", {"provider": "sandbox", "max_price": 5, "limit": 3}
            )
            assert 0 < offers["count"] <= 3
            offer = offers["offers"][0]
            created = await _call(
                client, "create_gpu_instance", {"provider": "sandbox", "offer_id": offer["id"]}
            )
            gpu = created["instance"]
            assert gpu["state"] == "running"
            assert gpu["id"] in await _rental_ids(client)

            answer = await _proxy(client, gpu["id"])
            assert answer["status"] == 200
            assert answer["instance_id"] == gpu["id"]
            assert answer["body"]["outputs"][0]["data"] == [3.0, 5.0, 7.0]  # y = 2x + 1

            credits = await _call(client, "get_credits", {})
            assert credits["credits_total"] == "100.000000"
            spending = await _call(client, "get_spending_info", {})
            assert "window_spent" in spending
            check = await _call(client, "check_spending_limit", {"estimated_cost": 0.5})
            assert check["allowed"] is True
            history = await _call(client, "get_billing_transactions", {"limit": 5})
            assert "transactions" in history

            reserved = await _call(
                client, "reserve_gpus", {"count": 3, "provider": "sandbox", "gpu_model": "RTX 3090"}
            )
            assert reserved["reservation"]["state"] == "confirmed"
            # count is GPUs: the 1x and 2x RTX 3090 make 3 on 2 instances
            assert reserved["reservation"]["gpus"] == 3
            assert sorted(m["num_gpus"] for m in reserved["reservation"]["members"]) == [1, 2]
            assert len(reserved["reservation"]["instances"]) == 2
            gone = await _call(client, "destroy_gpu_instance", {"instance_id": gpu["id"]})
            assert gone["instance"]["state"] in {"stopping", "terminated"}

            assert "greater than zero" in await _error(
                client, "check_spending_limit", {"estimated_cost": -1}
            )
            assert "finite" in await _error(
                client, "check_spending_limit", {"estimated_cost": "Infinity"}
            )
            assert "unknown field" in await _error(client, "get_credits", {"surprise": 1})
            assert "<= 16" in await _error(client, "reserve_gpus", {"count": 17})
            assert "not be negative" in await _error(
                client, "list_gpu_instances", {"max_price": "-1"}
            )
            missing = "00000000-0000-0000-0000-000000000000"
            assert "No such instance" in await _error(
                client, "destroy_gpu_instance", {"instance_id": missing}
            )
            with pytest.raises(MCPError) as unknown:
                await client.call_tool("no_such_tool", {})
            assert unknown.value.code == types.INVALID_PARAMS

    asyncio.run(scenario())


def test_per_request_era_and_users_are_separate(server: Server) -> None:
    async def scenario() -> None:
        async with AsyncExitStack() as stack:
            alice = await _client(stack, server, server.alice, "auto")
            bob = await _client(stack, server, server.bob, "auto")
            assert {t.name for t in (await alice.list_tools()).tools} >= TOOLS
            assert (await _call(alice, "get_credits", {}))["credits_total"] == "100.000000"
            assert (await _call(bob, "get_credits", {}))["credits_total"] == "5.000000"
            rentals = await _call(alice, "list_rentals", {})
            if rentals["rentals"]:
                text = await _error(
                    bob, "destroy_gpu_instance", {"instance_id": rentals["rentals"][0]["id"]}
                )
                assert "No such instance" in text

    asyncio.run(scenario())


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def test_http_auth_sessions_and_protocol_header(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        anonymous = http.post("/api/v1/mcp", json=INIT, headers=ACCEPT)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = http.post("/api/v1/mcp", json=INIT, headers={**ACCEPT, "X-API-Key": "nope"})
        assert wrong.status_code == 401

        alice = {**ACCEPT, "X-API-Key": server.alice}
        opened = http.post("/api/v1/mcp", json=INIT, headers=alice)
        assert opened.status_code == 200, opened.text
        assert opened.json()["result"]["protocolVersion"] == "2025-06-18"
        session = opened.headers["mcp-session-id"]
        follow = {**alice, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"}
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert http.post("/api/v1/mcp", json=note, headers=follow).status_code == 202
        ping = http.post(
            "/api/v1/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=follow
        )
        assert ping.json() == {"jsonrpc": "2.0", "id": 2, "result": {}}

        stolen = {**follow, "X-API-Key": server.bob}  # another user's credential
        tools = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
        assert http.post("/api/v1/mcp", json=tools, headers=stolen).status_code == 404
        bad_version = {**follow, "MCP-Protocol-Version": "1999-01-01"}
        assert http.post("/api/v1/mcp", json=tools, headers=bad_version).status_code == 400
        listed = http.post("/api/v1/mcp", json=tools, headers=follow)
        assert {t["name"] for t in listed.json()["result"]["tools"]} >= TOOLS

        login = http.post(
            "/api/v1/auth/login",
            json={"email": "alice@example.com", "password": "correct-horse-battery"},
        )
        bearer = {**ACCEPT, "Authorization": f"Bearer {login.json()['tokens']['access_token']}"}
        assert http.post("/api/v1/mcp", json=INIT, headers=bearer).status_code == 200

        foreign = {**alice, "Origin": "https://evil.example"}
        assert http.post("/api/v1/mcp", json=INIT, headers=foreign).status_code == 403
        assert http.delete("/api/v1/mcp", headers=follow).status_code == 200
        assert http.post("/api/v1/mcp", json=tools, headers=follow).status_code == 404


def _bridge_env(server: Server, key: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}},
        "PYTHONPATH": str(ROOT),
        "GPUPROXY_SERVER": server.url,
        "GPUPROXY_API_KEY": key,
    }


def test_stdio_bridge_forwards_tools(server: Server) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "interfaces.cli.mcp_bridge"],
        env=_bridge_env(server, server.alice),
        cwd=ROOT,
    )

    async def scenario() -> None:
        async with Client(params, mode="legacy") as client:
            assert client.server_info is not None
            assert client.server_info.name == "aiserve-gpuproxy"
            await client.session.send_ping()
            assert {t.name for t in (await client.list_tools()).tools} >= TOOLS
            credits = await _call(client, "get_credits", {})
            assert credits["credits_total"] == "100.000000"
            assert "greater than zero" in await _error(
                client, "check_spending_limit", {"estimated_cost": "0"}
            )

    asyncio.run(scenario())


def test_stdio_bridge_needs_a_key_and_a_server(server: Server) -> None:
    command = [sys.executable, "-m", "interfaces.cli.mcp_bridge"]
    env = _bridge_env(server, "")
    missing = subprocess.run(
        command, check=False, env=env, cwd=ROOT, capture_output=True, timeout=30
    )
    assert missing.returncode == 2
    assert b"GPUPROXY_API_KEY" in missing.stderr
    refused = subprocess.run(
        command,
        check=False,
        env=_bridge_env(server, "not-a-key"),
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode == 1
    assert b"HTTP 401" in refused.stderr, refused.stderr
    unreachable = subprocess.run(
        [*command, "--server", "http://127.0.0.1:9", "--api-key", "k"],
        check=False,
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert unreachable.returncode == 1
    assert b"cannot reach the server" in unreachable.stderr, unreachable.stderr


def _readme_snippet() -> dict[str, Any]:
    """The ``mcpServers`` entry from the README's Claude Desktop snippet."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", readme, flags=re.DOTALL)
    config = next(json.loads(b) for b in blocks if "mcpServers" in b)
    entry: dict[str, Any] = config["mcpServers"]["aiserve-gpuproxy"]
    return entry


def test_readme_claude_desktop_snippet_works(server: Server) -> None:
    entry = _readme_snippet()
    command = Path(sys.executable).parent / Path(entry["command"]).name  # the installed script
    assert command.name == "aiserve-gpuproxy-mcp"
    assert command.exists()
    assert set(entry["env"]) == {"GPUPROXY_SERVER", "GPUPROXY_API_KEY"}
    env = {**entry["env"], "GPUPROXY_SERVER": server.url, "GPUPROXY_API_KEY": server.bob}
    params = StdioServerParameters(command=str(command), args=entry.get("args", []), env=env)

    async def scenario() -> None:
        async with Client(params) as client:  # the SDK's default negotiation, as a host would
            assert (await _call(client, "get_credits", {}))["credits_total"] == "5.000000"

    asyncio.run(scenario())
