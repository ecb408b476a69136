"""The fee tally's lean Redis writer (``infrastructure/proxy/resp_writer.py``) on a real
redis-server: pipelined replies reach the right callers, error replies and outages answer
False through ``RedisFeeTally`` and leave the writer usable, AUTH and db come from the URL."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from infrastructure.proxy.fee_tally import TALLY, RedisFeeTally
from infrastructure.proxy.resp_writer import ReplyError, RespWriter
from tests.conftest import IN_CI
from tests.support.pg import free_port

PASSWORD = "tally-secret"


class Server:
    """A redis-server on a fixed loopback port that can be stopped and started again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("redis-server is required under CI")
            pytest.skip("redis-server not available")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="gpuproxy-resp-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://:{PASSWORD}@127.0.0.1:{self.port}/3"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", self.dir, "--requirepass", PASSWORD),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    s.start()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(s.dir, ignore_errors=True)


def test_pipelined_replies_reach_their_callers(redis_client: Any) -> None:
    """Twenty callers' commands in flight at once (Redis paused): each caller gets its own
    replies; the one whose key holds a hash gets WRONGTYPE, the others are stored."""
    redis_client.hset("k:bad", "x", "1")
    writer = RespWriter.for_client(redis_client)
    assert writer is not None

    async def body() -> list[BaseException | None]:
        await writer.incrby({"k:warm": 1})  # connected
        redis_client.execute_command("CLIENT", "PAUSE", "300", "WRITE")
        calls = []
        for i in range(20):
            batch = {f"k:{i}:a": i + 1, f"k:{i}:b": 100 + i}
            if i == 7:
                batch = {"k:7:a": 8, "k:bad": 1, "k:7:b": 107}
            calls.append(asyncio.ensure_future(writer.incrby(batch)))
        await asyncio.sleep(0.1)
        protocol = writer._protocol
        assert protocol is not None
        assert len(protocol.waiters) == 20  # all pipelined
        results = await asyncio.gather(*calls, return_exceptions=True)
        writer.close()
        return results

    results = asyncio.run(body())
    assert [isinstance(r, ReplyError) for r in results] == [i == 7 for i in range(20)]
    assert "WRONGTYPE" in str(results[7])
    for i in range(20):  # the refused command's neighbours were applied
        assert int(redis_client.get(f"k:{i}:a")) == i + 1
        assert int(redis_client.get(f"k:{i}:b")) == 100 + i


def test_an_error_reply_answers_false_and_the_writer_goes_on(redis_client: Any) -> None:
    redis_client.rpush(TALLY + "h-list", "x")
    tally = RedisFeeTally(redis_client)

    async def body() -> tuple[bool, bool]:
        bad = await tally.add("h-list", 5)
        good = await tally.add("h-ok", 7)
        await tally.aclose()
        return bad, good

    assert asyncio.run(body()) == (False, True)
    assert tally.failures == 1
    assert int(redis_client.get(TALLY + "h-ok")) == 7


def test_redis_restart_mid_run_reconnects(server: Server) -> None:
    """Writes while Redis is down answer False (the request is served); once it is back the
    writer connects again (AUTH and db 3 from the URL) and stores what comes after."""
    client: Any = redis.Redis.from_url(server.url)
    tally = RedisFeeTally(client)
    assert tally.lean
    assert RespWriter.for_client(client) is not None

    async def body() -> list[bool]:
        answers = [await tally.add("h1", 10)]
        server.stop()
        for _ in range(3):
            answers.append(await tally.add("h1", 100))
        server.start()
        answers.append(await tally.add("h1", 1))
        answers.append(await tally.add("h1", 2))
        await tally.aclose()
        return answers

    assert asyncio.run(body()) == [True, False, False, False, True, True]
    assert tally.failures == 3
    assert int(client.get(TALLY + "h1")) == 3  # the restart lost the first (no persistence)
    assert redis.Redis(port=server.port, password=PASSWORD, db=0).get(TALLY + "h1") is None
    client.close()


def test_a_wrong_password_answers_false(server: Server) -> None:
    tally = RedisFeeTally(redis.Redis(port=server.port, password="wrong", db=3))

    async def body() -> bool:
        ok = await tally.add("h1", 10)
        await tally.aclose()
        return ok

    assert asyncio.run(body()) is False
    assert tally.failures == 1


def test_a_stuck_write_answers_false_within_the_timeout_then_recovers(redis_client: Any) -> None:
    tally = RedisFeeTally(redis_client)

    async def body() -> tuple[bool, float, bool]:
        assert await tally.add("h1", 1)
        redis_client.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        t0 = time.monotonic()
        stuck = await tally.add("h1", 10)
        took = time.monotonic() - t0
        await asyncio.sleep(0.7)  # the pause is over
        after = await tally.add("h1", 100)
        await tally.aclose()
        return stuck, took, after

    stuck, took, after = asyncio.run(body())
    assert (stuck, after) == (False, True)
    assert 0.9 < took < 1.4
    assert int(redis_client.get(TALLY + "h1")) in (101, 111)  # the stuck one may land late


def test_tls_and_credential_providers_keep_redis_py() -> None:
    assert RespWriter.for_client(redis.Redis.from_url("rediss://127.0.0.1:6390/0")) is None
    provider = redis.UsernamePasswordCredentialProvider("u", "p")
    assert RespWriter.for_client(redis.Redis(port=6390, credential_provider=provider)) is None
    sock = str(Path(tempfile.gettempdir()) / "x.sock")
    unix = RespWriter.for_client(redis.Redis(unix_socket_path=sock))
    assert unix is not None
    assert unix.path == sock
