"""``/ws`` against a real server process: refusal, subscriptions and isolation, resume without
gaps or duplicates, bad messages, keep-alive, slow consumers, streaming inference."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from domain.marketplace import OfferQuery
from domain.services.marketplace import RentSpec
from infrastructure.settings import load_settings
from interfaces.bootstrap import Container, bootstrap
from tests.support.http import JWT_SECRET, env_of, server_process

USD = 1_000_000
PASSWORD = "correct-horse-battery"


# ---------------------------------------------------------------- client helpers


class Ws:
    """A synchronous test client: JSON in and out, pings answered, events collected."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.others: list[dict[str, Any]] = []

    def send(self, message: Any) -> None:
        self.conn.send(message if isinstance(message, str | bytes) else json.dumps(message))

    def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next message other than a ping (pings are answered)."""
        deadline = time.monotonic() + timeout
        while True:
            raw = self.conn.recv(timeout=max(0.01, deadline - time.monotonic()))
            message: dict[str, Any] = json.loads(raw)
            if message["type"] == "ping":
                self.send({"type": "pong"})
                continue
            return message

    def expect(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        message = self.recv(timeout)
        assert message["type"] == kind, message
        return message

    def events(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The next ``count`` events; other messages are kept in ``self.others``."""
        got: list[dict[str, Any]] = []
        while len(got) < count:
            message = self.recv(timeout)
            (got if message["type"] == "event" else self.others).append(message)
        return got

    def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Everything (but pings) that arrives within ``seconds``."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.recv(left))
            except TimeoutError:
                break
        return got

    def subscribe(self, **fields: Any) -> dict[str, Any]:
        self.send({"type": "subscribe", **fields})
        return self.expect_subscribed()

    def expect_subscribed(self, timeout: float = 10.0) -> dict[str, Any]:
        for message in self.others:
            if message["type"] == "subscribed":
                self.others.remove(message)
                return message
        return self.expect("subscribed", timeout)


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://", 1) + "/ws"


@contextlib.contextmanager
def open_ws(
    base: str,
    *,
    key: str | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
    protocols: list[str] | None = None,
) -> Iterator[Ws]:
    sent = {"X-API-Key": key} if key else dict(headers or {})
    offered: Any = protocols
    with connect(
        ws_url(base) + query, additional_headers=sent, subprotocols=offered, open_timeout=10
    ) as conn:
        yield Ws(conn)


@dataclass
class Account:
    user_id: str
    email: str
    key: str


def make_user(c: Container, name: str, *, admin: bool = False) -> Account:
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    user = c.users.create(email, PASSWORD, name)
    c.ledger.open_account(user.id)
    if admin:
        c.users.set_admin(email, True)
    _, key = c.auth.keys.create(user.id, "ws")
    return Account(user.id, email, key)


def grant(c: Container, account: Account, usd: int = 1) -> int:
    outcome = c.ledger.grant(
        account.user_id, usd * USD, key=f"t:{uuid.uuid4()}", source="admin", reason="t", actor="t"
    )
    assert outcome.position is not None
    return outcome.position


# ---------------------------------------------------------------- fixtures

BASE_ENV = {
    "GRPC_ENABLED": "false",
    "GUARDRAILS_ENABLED": "true",
    "RATE_LIMIT_PER_MINUTE": "100000",
    "SANDBOX_PROVIDER_ENABLED": "false",
    "PROXY_USAGE_FLUSH_SECONDS": "0.3",
    "PROXY_REQUEST_PRICE": "0.01",
    "PROXY_LEASE_AMOUNT": "0.50",
}


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Container]]:
    """One SQLite server process for the module, and a container on the same database."""
    data = tmp_path_factory.mktemp("ws") / "data"
    settings = load_settings(
        {
            "DATA_DIR": str(data),
            "JWT_SECRET": JWT_SECRET,
            "SANDBOX_PROVISIONING_DELAY": "0",
            "GUARDRAILS_ENABLED": "true",
        },
        env_file=None,
    )
    c = bootstrap(settings)
    try:
        with server_process({**env_of(settings), **BASE_ENV}) as url:
            yield url, c
    finally:
        c.close()


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Container]]:
    """A server with a tiny send queue and a fast keep-alive, for the failure paths."""
    data = tmp_path_factory.mktemp("ws-tight") / "data"
    settings = load_settings({"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET}, env_file=None)
    c = bootstrap(settings)
    env = {
        **env_of(settings),
        **BASE_ENV,
        "WS_QUEUE_SIZE": "4",
        "WS_PING_INTERVAL": "0.2",
        "WS_PING_TIMEOUT": "1.5",
    }
    try:
        with server_process(env) as url:
            yield url, c
    finally:
        c.close()


# ---------------------------------------------------------------- handshake


def test_unauthenticated_connections_are_refused(embedded: tuple[str, Container]) -> None:
    url, _c = embedded
    for protocols, headers in [
        (None, {}),
        (["bearer", "not-a-jwt"], {}),
        (["bearer", "gpx_0123456789abcdef_" + "A" * 43], {}),
        (["bearer"], {}),
        (["chat", "bearer"], {}),
        (None, {"Authorization": "Basic Zm9vOmJhcg=="}),
    ]:
        with (
            pytest.raises(InvalidStatus) as refused,
            open_ws(url, protocols=protocols, headers=headers),
        ):
            pass
        assert refused.value.response.status_code == 401
        assert b"error" in refused.value.response.body


def test_credentials_in_the_url_are_refused_with_400(embedded: tuple[str, Container]) -> None:
    """URLs end up in logs, so ``?token=``/``?api_key=`` are refused, even when valid."""
    url, c = embedded
    me = make_user(c, "url")
    for field, value in [("token", "whatever"), ("api_key", me.key)]:
        with pytest.raises(InvalidStatus) as refused, open_ws(url, query=f"?{field}={value}"):
            pass
        assert refused.value.response.status_code == 400
        problem = json.loads(refused.value.response.body)
        assert problem["field"] == field
        assert "subprotocol" in problem["error"]


def test_jwt_or_api_key_in_the_bearer_subprotocol_or_a_header(
    embedded: tuple[str, Container],
) -> None:
    url, c = embedded
    me = make_user(c, "jwt")
    token = httpx.post(
        f"{url}/api/v1/auth/login", json={"email": me.email, "password": PASSWORD}, timeout=30
    ).json()["tokens"]["access_token"]
    with open_ws(url, protocols=["bearer", token]) as ws:
        assert ws.conn.subprotocol == "bearer"  # browsers insist on one offered protocol back
        assert ws.subscribe(topics=["account"])["user_id"] == me.user_id
    with open_ws(url, headers={"Authorization": f"Bearer {token}"}) as ws:
        assert ws.conn.subprotocol is None
        assert ws.subscribe()["user_id"] == me.user_id
    with open_ws(url, protocols=["bearer", me.key]) as ws:
        assert ws.subscribe()["scope"] == "user"


# ---------------------------------------------------------------- subscriptions


def test_users_receive_only_their_own_events_and_admins_all(
    embedded: tuple[str, Container],
) -> None:
    url, c = embedded
    alice, bob, boss = make_user(c, "alice"), make_user(c, "bob"), make_user(c, "boss", admin=True)
    with (
        open_ws(url, key=alice.key) as a,
        open_ws(url, key=bob.key) as b,
        open_ws(url, key=boss.key) as admin,
    ):
        a.subscribe(topics=["account", "spending"])
        b.subscribe()
        admin.subscribe(all=True, topics=["account"])
        started = time.monotonic()
        pa = grant(c, alice, 3)
        got = a.expect("event")
        latency = time.monotonic() - started
        pb = grant(c, bob, 4)
        got_b = b.expect("event")
        seen = admin.events(2)
        leaked_to_alice, leaked_to_bob = a.quiet(0.4), b.quiet(0.1)

    assert latency < 1.0, f"event took {latency:.2f}s to arrive"
    assert got["id"] == pa
    assert got["user_id"] == alice.user_id
    assert got["event"] == "CreditAccount.Granted"
    assert got["data"]["amount"] == 3 * USD
    assert got["account"]["credits_remaining"] == "3.000000"
    assert got_b["id"] == pb
    assert got_b["user_id"] == bob.user_id
    assert [e["id"] for e in seen] == [pa, pb]
    assert leaked_to_alice == []
    assert leaked_to_bob == []


def test_non_admins_cannot_watch_others(embedded: tuple[str, Container]) -> None:
    url, c = embedded
    alice, bob = make_user(c, "nosy"), make_user(c, "other")
    with open_ws(url, key=alice.key) as ws:
        ws.send({"type": "subscribe", "all": True, "id": "a"})
        refused = ws.expect("error")
        assert refused["code"] == "forbidden"
        assert refused["id"] == "a"
        ws.send({"type": "subscribe", "user_id": bob.user_id, "id": "b"})
        assert ws.expect("error")["code"] == "forbidden"
        ws.subscribe()
        grant(c, bob)
        mine = grant(c, alice)
        assert ws.expect("event")["id"] == mine  # bob's grant, before it, was not sent


def test_admin_may_watch_one_user(embedded: tuple[str, Container]) -> None:
    url, c = embedded
    boss, carol, dave = make_user(c, "boss2", admin=True), make_user(c, "carol"), make_user(c, "d")
    with open_ws(url, key=boss.key) as ws:
        assert ws.subscribe(user_id=carol.user_id)["user_id"] == carol.user_id
        grant(c, dave)
        mine = grant(c, carol)
        assert ws.expect("event")["id"] == mine


def test_spending_topic_carries_window_totals(embedded: tuple[str, Container]) -> None:
    url, c = embedded
    me = make_user(c, "spender")
    grant(c, me, 10)
    limited = c.ledger.set_limits(me.user_id, {"5MIN": 5 * USD}, actor="t")
    with open_ws(url, key=me.key) as ws:
        ws.subscribe(topics=["spending"], since=limited.position)
        charged = c.ledger.charge(me.user_id, 2 * USD, key="spend-1", reason="t", actor="t")
        event = ws.expect("event")
    assert event["id"] == charged.position
    assert event["topics"] == ["spending"]
    assert event["spending"]["window_spent"]["5MIN"] == "2.000000"
    assert event["spending"]["limits"]["5MIN"] == "5.000000"


def test_resume_after_reconnect_has_no_gap_and_no_duplicate(
    embedded: tuple[str, Container],
) -> None:
    url, c = embedded
    me, other = make_user(c, "resume"), make_user(c, "noise")
    with open_ws(url, key=me.key) as ws:
        ws.subscribe(topics=["account"])
        first = [grant(c, me) for _ in range(3)]
        got = [e["id"] for e in ws.events(3)]
        assert got == first
    last = got[-1]
    # while disconnected: our events mixed with someone else's
    missed = []
    for _ in range(5):
        grant(c, other)
        missed.append(grant(c, me))
    with open_ws(url, key=me.key) as ws:
        ws.send({"type": "subscribe", "topics": ["account"], "since": last, "id": "r"})
        replayed = [e["id"] for e in ws.events(5)]
        done = ws.expect_subscribed()  # replayed up to the feed's cursor, the rest came live
        assert done["id"] == "r"
        assert done["replayed"] <= 5
        live = grant(c, me)
        assert ws.expect("event")["id"] == live
        assert ws.quiet(0.3) == []
    assert replayed == missed


def test_resume_while_events_keep_arriving(embedded: tuple[str, Container]) -> None:
    """Events committed during the replay are neither lost nor sent twice."""
    url, c = embedded
    me = make_user(c, "busy")
    start = grant(c, me)
    before = [grant(c, me) for _ in range(30)]

    async def writer() -> list[int]:
        out = []
        for _ in range(30):
            out.append(await asyncio.to_thread(grant, c, me))
        return out

    with open_ws(url, key=me.key) as ws:
        ws.send({"type": "subscribe", "topics": ["account"], "since": start})
        during = asyncio.run(writer())
        ids = [e["id"] for e in ws.events(60, timeout=10)]
        assert ws.expect_subscribed()["type"] == "subscribed"
        assert ws.quiet(0.3) == []
    assert ids == before + during


# ---------------------------------------------------------------- robustness


def test_bad_messages_get_errors_and_the_connection_survives(
    embedded: tuple[str, Container],
) -> None:
    url, c = embedded
    me = make_user(c, "fuzzy")
    bad: list[str | bytes] = [
        "not json",
        "[1, 2, 3]",
        '{"no_type": 1}',
        '{"type": "dance"}',
        '{"type": "subscribe", "topics": "account"}',
        '{"type": "subscribe", "topics": ["weather"], "id": "t1"}',
        '{"type": "subscribe", "since": -5}',
        '{"type": "subscribe", "surprise": true}',
        '{"type": "infer", "protocol": "gopher", "instance_id": "x"}',
        '{"type": "cancel", "id": "nothing-running"}',
        b"\x00\x01binary",
        "x" * 300_000,
        '{"type": "subscribe", "since": 1e400}',
    ]
    with open_ws(url, key=me.key) as ws:
        for frame in bad:
            ws.send(frame)
            reply = ws.recv()
            assert reply["type"] == "error", (frame[:40], reply)
            assert reply["error"]
        ws.send({"type": "ping", "id": "still-there"})
        pong = ws.expect("pong")
        assert pong["id"] == "still-there"
        ws.subscribe()
        mine = grant(c, me)
        assert ws.expect("event")["id"] == mine


def test_keep_alive_pings_and_silent_clients_are_closed(tight: tuple[str, Container]) -> None:
    url, c = tight
    me = make_user(c, "silent")
    with open_ws(url, key=me.key) as silent:
        first = json.loads(silent.conn.recv(timeout=5))
        assert first["type"] == "ping"
        assert "position" in first
        closed = _read_until_closed(silent.conn)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 4408
    # a client that answers stays connected past the timeout
    with open_ws(url, key=me.key) as ws:
        ws.subscribe()
        ws.quiet(2.5)  # answers every ping
        ws.send({"type": "ping"})
        ws.expect("pong")


def _small_buffer_socket(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return sock


def test_slow_consumer_is_disconnected_with_4008(tight: tuple[str, Container]) -> None:
    url, c = tight
    me, boss = make_user(c, "slow"), make_user(c, "watcher", admin=True)
    with connect(
        ws_url(url),
        sock=_small_buffer_socket(url),
        additional_headers={"X-API-Key": me.key},
        compression=None,
        max_queue=1,
        open_timeout=10,
    ) as conn:
        produced, closed, received = _flood_until_dropped(url, c, me, boss, conn)
    assert closed.rcvd is not None, "no close frame"
    assert closed.rcvd.code == 4008
    assert "slow consumer" in closed.rcvd.reason
    assert received < produced


def _read_until_closed(conn: ClientConnection, limit: float = 20) -> ConnectionClosed:
    """Read (and drop) messages until the server closes; the close as an exception."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            conn.recv(timeout=max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            return exc
    raise AssertionError("the server did not close the connection")


def _flood_until_dropped(
    url: str, c: Container, me: Account, boss: Account, conn: ClientConnection
) -> tuple[int, ConnectionClosed, int]:
    conn.send(json.dumps({"type": "subscribe", "topics": ["account"]}))
    time.sleep(0.5)

    def connections() -> int:
        body = httpx.get(
            f"{url}/api/v1/admin/projections", headers={"X-API-Key": boss.key}, timeout=30
        ).json()
        return int(body["streams"]["connections"])

    reason = "r" * 400  # big events fill the socket buffers sooner
    produced = 0
    while produced < 4000:
        for _ in range(100):
            c.ledger.grant(me.user_id, 1, key=f"slow:{uuid.uuid4()}", reason=reason, actor="t")
        produced += 100
        conn.send(json.dumps({"type": "pong"}))  # alive, just not reading
        if connections() == 0:
            break
    else:
        pytest.fail("a client that never reads was not disconnected")
    received = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            conn.recv(timeout=max(0.01, deadline - time.monotonic()))
            received += 1
        except ConnectionClosed as exc:
            return produced, exc, received
    raise AssertionError("no close after the drop")


# ---------------------------------------------------------------- streaming inference


def _running_instance(c: Container, owner: Account) -> str:
    async def rent() -> str:
        offers = (await c.marketplace.catalog(OfferQuery(), "sandbox")).offers
        offer = min(offers, key=lambda o: o.price_per_hour)
        gpu = await c.marketplace.rent(owner.user_id, "sandbox", offer.offer_id, RentSpec())
        await c.marketplace.refresh(gpu.id)
        return str(gpu.id)

    instance_id = asyncio.run(rent())
    c.runner.catch_up()
    return instance_id


def _infer_message(ws: Ws) -> dict[str, Any]:
    """The next inference message; subscribed events (a usage flush) may arrive in between."""
    while (message := ws.recv(10))["type"] == "event":
        pass
    return message


def _expect_infer(ws: Ws, kind: str) -> dict[str, Any]:
    message = _infer_message(ws)
    assert message["type"] == kind, message
    return message


def _stream(ws: Ws, ref: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """The start, the concatenated text and the end of one inference."""
    start = _infer_message(ws)
    assert start["type"] == "infer.start", start
    assert start["id"] == ref
    text = ""
    while True:
        message = _infer_message(ws)
        if message["type"] == "infer.end":
            return start, text, message
        assert message["type"] == "infer.chunk", message
        assert message["id"] == ref
        text += message["data"]


def test_streaming_inference_is_proxied_metered_and_isolated(
    embedded: tuple[str, Container],
) -> None:
    url, c = embedded
    me, stranger = make_user(c, "infer"), make_user(c, "stranger")
    grant(c, me, 10)
    grant(c, stranger, 10)
    mine, theirs = _running_instance(c, me), _running_instance(c, stranger)
    with open_ws(url, key=me.key) as ws:
        ws.subscribe(topics=["load"])
        ws.send(
            {
                "type": "infer",
                "id": "s1",
                "instance_id": mine,
                "method": "GET",
                "path": "/stream?chunks=5&delay_ms=30",
            }
        )
        start, text, end = _stream(ws, "s1")
        assert start["status"] == 200
        assert start["instance_id"] == mine
        lines = text.splitlines()
        assert [line.split(" from ")[0] for line in lines] == [f"chunk {i}" for i in range(5)]
        assert end["bytes"] == len(text.encode())

        ws.send(
            {
                "type": "infer",
                "id": "oip",
                "protocol": "openinference",
                "model": "demo",
                "payload": {
                    "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]
                },
            }
        )
        start, text, _ = _stream(ws, "oip")  # balanced over my (one) instance
        assert start["status"] == 200
        assert start["instance_id"] == mine
        assert json.loads(text)["outputs"][0]["data"] == [3, 5, 7]

        ws.send({"type": "infer", "id": "x", "instance_id": theirs, "path": "/echo"})
        refused = _expect_infer(ws, "error")
        assert refused["id"] == "x"
        assert refused["status"] == 404

        ws.send({"type": "infer", "id": "m", "model_id": "nope", "payload": {"input": [1]}})
        missing = _expect_infer(ws, "error")
        assert missing["id"] == "m"
        assert missing["status"] == 404

        ws.send(
            {
                "type": "infer",
                "id": "long",
                "instance_id": mine,
                "method": "GET",
                "path": "/stream?chunks=100&delay_ms=50",
            }
        )
        assert _expect_infer(ws, "infer.start")["id"] == "long"
        ws.send({"type": "cancel", "id": "long"})
        while (message := _infer_message(ws))["type"] == "infer.chunk":
            pass
        assert message == {"type": "infer.cancelled", "id": "long"}

        # the proxy's usage flush reaches the load topic, for my instance only
        deadline = time.monotonic() + 10
        requests = 0
        while requests < 3 and time.monotonic() < deadline:
            message = ws.recv(10)
            if message["type"] == "event":
                assert message["event"] == "ProxyUsage.Recorded"
                rows = message["data"]["rows"]  # empty in a flush of only session tallies
                assert {r["owner"] for r in rows} <= {me.user_id}
                assert {s["user_id"] for s in message["data"].get("sessions", [])} <= {me.user_id}
                requests += sum(r["requests"] for r in rows if r["instance_id"] == mine)
        assert requests >= 3
    holds = c.ledger.account(me.user_id).holds
    assert any(h.hold_id.startswith("lease:") for h in holds), "the request fee lease is held"


def test_model_inference_over_ws_matches_predict(embedded: tuple[str, Container]) -> None:
    pytest.importorskip("onnx")
    from tests.integration.test_models_support import dense_onnx

    url, c = embedded
    me = make_user(c, "modeller")
    grant(c, me, 5)
    content, _ = dense_onnx()
    with httpx.Client(base_url=url, headers={"X-API-Key": me.key}, timeout=60) as http:
        uploaded = http.post(
            "/api/v1/models/upload",
            files={"model": ("dense.onnx", content, "application/octet-stream")},
            data={"name": "dense"},
        )
        assert uploaded.status_code == 201, uploaded.text
        model_id = uploaded.json()["model_id"]
        body = {"input": [0.5, -1.0, 2.0, 0.25]}
        expected = http.post(f"/api/v1/models/{model_id}/predict", json=body).json()
    with open_ws(url, key=me.key) as ws:
        ws.send({"type": "infer", "id": "m1", "model_id": model_id, "payload": body})
        start, text, end = _stream(ws, "m1")
        assert start["model_id"] == model_id
        assert json.loads(text)["outputs"] == expected["outputs"]
        assert end["chunks"] == 1
        ws.send({"type": "infer", "id": "m2", "model_id": model_id, "payload": [1, 2]})
        assert ws.expect("error")["status"] == 400


def test_failed_handshakes_count_against_the_client_address(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The WebSocket door passes the client address, so its failed key attempts are limited too."""
    data = tmp_path_factory.mktemp("ws-throttle") / "data"
    settings = load_settings({"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET}, env_file=None)
    c = bootstrap(settings)
    env = {**env_of(settings), **BASE_ENV, "AUTH_FAILURES_PER_ADDRESS": "3"}
    try:
        me = make_user(c, "throttled")
        prefix, key_id, secret = me.key.split("_", 2)
        with server_process(env) as url:
            statuses = []
            for n in range(5):
                bad = f"{prefix}_{key_id}_{str(n) * len(secret)}"
                with pytest.raises(InvalidStatus) as refused, open_ws(url, key=bad):
                    pass
                statuses.append(refused.value.response.status_code)
            assert statuses[:3] == [401, 401, 401]
            assert statuses[3:] == [429, 429]  # this address is over its limit
            with pytest.raises(InvalidStatus) as refused, open_ws(url, key=me.key):
                pass  # a key this process never verified waits at this address too
            assert refused.value.response.status_code == 429
    finally:
        c.close()
