"""langchain-core loads ``GpuProxyToolkit`` from a real server and invokes its tools."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from langchain_core.tools import BaseTool

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from interfaces.langchain_toolkit import GpuProxyToolkit
from tests.support.http import JWT_SECRET, env_of, server_process

USD = 1_000_000


@pytest.fixture(scope="module")
def toolkit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuProxyToolkit]:
    data = tmp_path_factory.mktemp("langchain")
    settings = load_settings({"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET}, env_file=None)
    c = bootstrap(settings)
    try:
        user = c.users.create("lc@example.com", "correct-horse-battery", "LC")
        c.ledger.grant(user.id, 20 * USD, key="seed")
        _, key = c.auth.keys.create(user.id, "langchain")
    finally:
        c.close()
    env = {
        **env_of(settings),
        "SANDBOX_PROVISIONING_DELAY": "0",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "GRPC_ENABLED": "false",
    }
    with server_process(env, data / "server.log") as url:
        yield GpuProxyToolkit(base_url=url, api_key=key)


def _tools(toolkit: GpuProxyToolkit) -> dict[str, BaseTool]:
    return {t.name: t for t in toolkit.get_tools()}


def test_toolkit_tools_have_schemas_and_run(toolkit: GpuProxyToolkit) -> None:
    tools = _tools(toolkit)
    assert {"list_gpu_instances", "get_credits", "proxy_inference_request"} <= set(tools)
    check = tools["check_spending_limit"]
    assert check.args["estimated_cost"]["type"] == ["string", "number"]
    assert check.tool_call_schema is not None

    credits = tools["get_credits"].invoke({})
    assert credits["credits_total"] == "20.000000"
    offers = tools["list_gpu_instances"].invoke({"provider": "sandbox", "limit": 2})
    assert offers["count"] == 2
    assert check.invoke({"estimated_cost": 1.25})["allowed"] is True

    refused = check.invoke({"estimated_cost": -1})
    assert isinstance(refused, str)
    assert "greater than zero" in refused


def test_toolkit_async_and_tool_calls(toolkit: GpuProxyToolkit) -> None:
    tools = _tools(toolkit)
    spending = asyncio.run(tools["get_spending_info"].ainvoke({}))
    assert "window_spent" in spending
    call = {"name": "get_credits", "args": {}, "id": "call-1", "type": "tool_call"}
    message = tools["get_credits"].invoke(call)
    assert message.tool_call_id == "call-1"
    assert "credits_total" in str(message.content)


def test_toolkit_needs_a_credential() -> None:
    with pytest.raises(ValueError, match="api_key or a token"):
        GpuProxyToolkit(base_url="http://127.0.0.1:9").get_tools()
