"""LangChain toolkit for GPU Proxy (``pip install "aiserve-gpuproxy[langchain]"``).

The server's agent tools as LangChain ``StructuredTool`` objects: their names, descriptions and
JSON Schemas come from ``GET /api/v1/langchain/tools``, and each call is an HTTP request to
``POST /api/v1/langchain`` (sync or async), authenticated by an API key or a Bearer token.
A refused or failed call raises ``ToolException`` with the server's message; the tools are made
with ``handle_tool_error=True``, so an agent sees that message as the tool's answer.

    toolkit = GpuProxyToolkit(base_url="http://localhost:8080", api_key="...")
    tools = toolkit.get_tools()
"""

from __future__ import annotations

from typing import Any

import httpx
from langchain_core.tools import BaseTool, BaseToolkit, StructuredTool, ToolException

TOOLS_PATH = "/api/v1/langchain/tools"
EXECUTE_PATH = "/api/v1/langchain"


class GpuProxyToolkit(BaseToolkit):
    """GPU Proxy's tools (GPU offers, rentals, credits, spending, inference) for LangChain."""

    base_url: str = "http://localhost:8080"
    api_key: str | None = None
    token: str | None = None
    timeout: float = 120.0

    def headers(self) -> dict[str, str]:
        if self.api_key:
            return {"X-API-Key": self.api_key}
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        raise ValueError("GpuProxyToolkit needs an api_key or a token")

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(), timeout=self.timeout)

    def definitions(self) -> list[dict[str, Any]]:
        """The server's tool definitions (name, description, parameters JSON Schema)."""
        with self._client() as client:
            response = client.get(TOOLS_PATH)
        response.raise_for_status()
        tools: list[dict[str, Any]] = response.json()["tools"]
        return tools

    def get_tools(self) -> list[BaseTool]:
        return [self._tool(d) for d in self.definitions()]

    def _tool(self, definition: dict[str, Any]) -> BaseTool:
        name = str(definition["name"])

        def run(**arguments: Any) -> Any:
            with self._client() as client:
                return _result(client.post(EXECUTE_PATH, json=_envelope(name, arguments)))

        async def arun(**arguments: Any) -> Any:
            async with httpx.AsyncClient(
                base_url=self.base_url, headers=self.headers(), timeout=self.timeout
            ) as client:
                return _result(await client.post(EXECUTE_PATH, json=_envelope(name, arguments)))

        return StructuredTool.from_function(
            func=run,
            coroutine=arun,
            name=name,
            description=str(definition.get("description", name)),
            args_schema=definition.get("parameters") or {"type": "object", "properties": {}},
            handle_tool_error=True,
        )


def _envelope(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"input": {"action": "execute", "tool": tool, "tool_input": arguments}}


def _result(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        raise ToolException(f"HTTP {response.status_code}: {response.text[:300]}") from None
    if response.status_code != 200:
        message = body.get("error") or body.get("detail") or f"HTTP {response.status_code}"
        raise ToolException(str(message))
    return body["output"]["result"]["content"]
