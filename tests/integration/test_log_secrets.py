"""No credential reaches the server log: a real server at debug level with the access log on,
good and bad logins and authentications over REST, WebSocket, gRPC and MCP, then the log file
is searched for every JWT, API key and password used."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from infrastructure.settings import load_settings
from interfaces.grpc.generated import gpuproxy as pb
from tests.support.http import JWT_SECRET, env_of, server_process
from tests.support.pg import free_port

PASSWORD = "correct-horse-battery-staple"
MCP_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


@dataclass
class Logged:
    url: str
    log: Path
    secrets: dict[str, str]  # what -> the secret string that must not be in the log


def _tamper(secret: str) -> str:
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


def _ws(url: str, *, query: str = "", protocols: list[str] | None = None) -> str | None:
    """Open ``/ws``, subscribe, close; the subprotocol the server selected."""
    target = url.replace("http://", "ws://", 1) + "/ws" + query
    with connect(target, subprotocols=protocols, open_timeout=10) as conn:  # type: ignore[arg-type]
        conn.send(json.dumps({"type": "subscribe", "topics": ["account"]}))
        while json.loads(conn.recv(timeout=10))["type"] != "subscribed":
            pass
        return conn.subprotocol


def _ws_refused(url: str, *, query: str = "", protocols: list[str] | None = None) -> int:
    with pytest.raises(InvalidStatus) as refused:
        _ws(url, query=query, protocols=protocols)
    status: int = refused.value.response.status_code
    return status


def _rest(http: httpx.Client, s: dict[str, str]) -> None:
    credits = "/api/v1/billing/credits"
    assert http.get(credits, headers={"X-API-Key": s["key"]}).status_code == 200
    assert http.get(credits, headers={"Authorization": f"Bearer {s['jwt']}"}).status_code == 200
    assert http.get(credits, headers={"Authorization": f"Bearer {s['key']}"}).status_code == 200
    assert http.get(credits, headers={"X-API-Key": s["bad_key"]}).status_code == 401
    assert http.get(credits, headers={"Authorization": f"Bearer {s['bad_jwt']}"}).status_code == 401
    # credentials in a REST URL are never accepted, but the access log sees the URL
    query = {"api_key": s["key"], "token": s["jwt"]}
    assert http.get(credits, params=query).status_code == 401
    wrong = {"email": s["email"], "password": s["bad_password"]}
    assert http.post("/api/v1/auth/login", json=wrong).status_code == 401


def _websocket(url: str, s: dict[str, str]) -> None:
    assert _ws(url, protocols=["bearer", s["jwt"]]) == "bearer"
    assert _ws(url, protocols=["bearer", s["key"]]) == "bearer"
    assert _ws_refused(url, protocols=["bearer", s["bad_jwt"]]) == 401
    assert _ws_refused(url, protocols=["bearer", s["bad_key"]]) == 401
    assert _ws_refused(url, query=f"?token={s['jwt']}") == 400
    assert _ws_refused(url, query=f"?api_key={s['key']}") == 400


def _grpc(port: int, s: dict[str, str]) -> None:
    async def calls() -> None:
        async with Channel("127.0.0.1", port) as channel:
            stub = pb.GpuProxyServiceStub(channel)
            login = await stub.login(pb.LoginRequest(email=s["email"], password=PASSWORD))
            s["grpc_jwt"] = login.token
            with pytest.raises(GRPCError):
                await stub.login(pb.LoginRequest(email=s["email"], password=s["bad_password"]))
            for meta, ok in [
                ({"authorization": f"Bearer {login.token}"}, True),
                ({"x-api-key": s["key"]}, True),
                ({"x-api-key": s["bad_key"]}, False),
                ({"authorization": f"Bearer {s['bad_jwt']}"}, False),
            ]:
                call = stub.get_credits(pb.GetCreditsRequest(), metadata=meta)
                if ok:
                    await call
                else:
                    with pytest.raises(GRPCError):
                        await call

    asyncio.run(calls())


def _mcp(http: httpx.Client, s: dict[str, str]) -> None:
    for headers, status in [
        ({"X-API-Key": s["key"]}, 200),
        ({"Authorization": f"Bearer {s['jwt']}"}, 200),
        ({"X-API-Key": s["bad_key"]}, 401),
        ({"Authorization": f"Bearer {s['bad_jwt']}"}, 401),
    ]:
        answer = http.post("/api/v1/mcp", json=MCP_INIT, headers={**MCP_HEADERS, **headers})
        assert answer.status_code == status, answer.text


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    """Every kind of authentication against one debug-level server, then its log."""
    root = tmp_path_factory.mktemp("log-secrets")
    settings = load_settings(
        {"DATA_DIR": str(root / "data"), "JWT_SECRET": JWT_SECRET}, env_file=None
    )
    grpc_port = free_port()
    env = {
        **env_of(settings),
        "LOG_LEVEL": "DEBUG",
        "ACCESS_LOG": "true",
        "GRPC_PORT": str(grpc_port),
        "RATE_LIMIT_PER_MINUTE": "100000",
        "SANDBOX_PROVIDER_ENABLED": "false",
    }
    log = root / "server.log"
    s: dict[str, str] = {"email": "logged@example.com", "bad_password": "Wr0ng-Passw0rd-xyz"}
    with server_process(env, log_file=log) as url, httpx.Client(base_url=url, timeout=30) as http:
        who = {"email": s["email"], "password": PASSWORD}
        assert http.post("/api/v1/auth/register", json={**who, "name": "L"}).status_code == 201
        s["jwt"] = http.post("/api/v1/auth/login", json=who).json()["tokens"]["access_token"]
        made = http.post(
            "/api/v1/auth/apikey",
            json={"name": "log"},
            headers={"Authorization": f"Bearer {s['jwt']}"},
        )
        s["key"] = made.json()["api_key"]
        s["bad_jwt"], s["bad_key"] = _tamper(s["jwt"]), _tamper(s["key"])
        _rest(http, s)
        _websocket(url, s)
        _grpc(grpc_port, s)
        _mcp(http, s)
    secrets = {k: v for k, v in s.items() if k != "email"}
    secrets["password"] = PASSWORD
    secrets["jwt signature"] = s["jwt"].rsplit(".", 1)[1]
    secrets["key secret"] = s["key"].rsplit("_", 1)[1]
    return Logged(url, log, secrets)


def test_the_log_saw_every_door_at_debug_level(logged: Logged) -> None:
    """Not an empty log: the lines that used to carry credentials are there, redacted."""
    text = logged.log.read_text()
    assert " DEBUG " in text
    assert '"WebSocket /ws?token=[REDACTED]" 400' in text
    assert '"WebSocket /ws?api_key=[REDACTED]" 400' in text
    assert '"WebSocket /ws" [accepted]' in text
    assert "< sec-websocket-protocol: [REDACTED]" in text  # the handshake headers, at debug
    assert "GET /api/v1/billing/credits?api_key=[REDACTED]&token=[REDACTED] HTTP/1.1" in text


def test_no_credential_reaches_the_log(logged: Logged) -> None:
    text = logged.log.read_text()
    leaked = [what for what, secret in logged.secrets.items() if secret in text]
    assert leaked == [], f"in the server log: {leaked}"
