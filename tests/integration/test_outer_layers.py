"""The app's outer layers cost no thread hop: a plain GET is answered in the event loop.

The app (``create_app`` over a real container, SQLite) is driven straight through ASGI with
the event loop's default executor replaced by one that records what it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app


class RecordingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.given: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.given.append(getattr(fn, "__qualname__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
def sqlite_container(sqlite_settings: Settings) -> Iterator[Container]:
    c = bootstrap(sqlite_settings)
    try:
        yield c
    finally:
        c.close()


async def _get(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    sent: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if not sent:
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_plain_get_hops_to_no_worker_thread(sqlite_container: Container) -> None:
    app = create_app(sqlite_container)
    executor = RecordingExecutor()

    async def go() -> list[tuple[int, bytes]]:
        asyncio.get_running_loop().set_default_executor(executor)
        answers = [await _get(app, "/health", []) for _ in range(3)]
        answers.append(await _get(app, "/health", [(b"user-agent", b"4242424242424242")]))
        return answers

    try:
        answers = asyncio.run(go())
    finally:
        executor.shutdown()
    assert [status for status, _ in answers] == [200, 200, 200, 400]
    assert b"User-Agent" in answers[3][1]  # the card guard still runs, in the loop
    assert executor.given == []  # was: the card guard, a sync hook, in a thread per request
