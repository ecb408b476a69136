"""The bounded mixed load: every request is recorded with its time, kind, answer and door.

Each worker stops at ``deadline`` (monotonic); only loopback URLs are used. Money commands
are retried with the same ``Idempotency-Key`` (at another door) until acknowledged, as a
careful client would, so the event store can be compared with what was acknowledged.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from domain.money import usd_to_micros

PROXY_PATH = "/api/v1/gpu/proxy/pool/v1/ping"


@dataclass
class Rec:
    """One HTTP exchange (or a failure to get one)."""

    t: float  # monotonic time the request was sent
    kind: str
    door: str  # "nginx" or "replicaN"
    status: int  # 0: no answer (connection error, timeout)
    retry_after: bool
    error: str = ""
    reset: str = ""  # X-RateLimit-Reset, for the rate-limit check
    took: float = 0.0  # seconds until the answer (or the failure)
    wall: float = field(default_factory=time.time)  # epoch seconds, about when it was sent

    def overlaps(self, start: float, end: float) -> bool:
        """In flight at some moment of [start, end]."""
        return self.t <= end and self.t + self.took >= start


@dataclass
class Acked:
    key: str
    user_id: str
    amount: int  # micro-USD


@dataclass
class LoadState:
    records: list[Rec] = field(default_factory=list)
    grants_sent: dict[str, Acked] = field(default_factory=dict)
    grants_acked: dict[str, Acked] = field(default_factory=dict)
    grants_given_up: list[str] = field(default_factory=list)
    rentals: dict[str, str] = field(default_factory=dict)  # instance id -> user id
    destroyed: set[str] = field(default_factory=set)
    ws_messages: int = 0
    ws_connects: int = 0
    stop: bool = False


class Load:
    def __init__(
        self,
        *,
        nginx: str,
        replicas: list[str],
        admin_key: str,
        payers: list[tuple[str, str]],  # (user id, API key)
        rate_key: str,
        offers: list[int],
        deadline: float,
    ) -> None:
        self.nginx = nginx
        self.replicas = replicas
        self.admin_key = admin_key
        self.payers = payers
        self.rate_key = rate_key
        self.offers = iter(offers)
        self.deadline = deadline
        self.state = LoadState()
        self.t0 = time.monotonic()
        self._rng = random.Random(16)

    def doors(self) -> list[tuple[str, str]]:
        return [("nginx", self.nginx)] + [(f"replica{i}", u) for i, u in enumerate(self.replicas)]

    def running(self) -> bool:
        return time.monotonic() < self.deadline and not self.state.stop

    async def send(
        self,
        client: httpx.AsyncClient,
        kind: str,
        method: str,
        path: str,
        *,
        door: tuple[str, str] | None = None,
        key: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[Rec, httpx.Response | None]:
        name, base = door or ("nginx", self.nginx)
        sent = time.monotonic()
        try:
            response = await client.request(
                method,
                base + path,
                json=body,
                headers={"X-API-Key": key, **(headers or {})},
                timeout=30,
            )
        except httpx.HTTPError as exc:
            rec = Rec(sent, kind, name, 0, False, type(exc).__name__)
            rec.took = time.monotonic() - sent
            self.state.records.append(rec)
            return rec, None
        rec = Rec(
            sent,
            kind,
            name,
            response.status_code,
            "retry-after" in response.headers,
            response.text[:160] if response.status_code >= 500 else "",
            reset=response.headers.get("x-ratelimit-reset", ""),
            took=time.monotonic() - sent,
        )
        self.state.records.append(rec)
        return rec, response

    # ------------------------------------------------------------------ workers

    async def proxy_worker(self, client: httpx.AsyncClient, key: str) -> None:
        while self.running():
            await self.send(client, "proxy", "GET", PROXY_PATH, key=key)
            await asyncio.sleep(0.3)

    async def grant_worker(self, client: httpx.AsyncClient) -> None:
        for n in itertools.count():
            if not self.running():
                return
            user_id, _ = self._rng.choice(self.payers)
            amount = f"{self._rng.randint(1, 500) / 100:.2f}"
            idem = f"scale-{uuid.uuid4()}"
            acked = Acked(idem, user_id, usd_to_micros(amount))
            self.state.grants_sent[idem] = acked
            twice = n % 4 == 0  # every fourth grant is sent again, to another door
            task = self._grant(client, idem, acked, amount, self.doors()[n % 4])
            if twice:
                await asyncio.gather(
                    task, self._grant(client, idem, acked, amount, self.doors()[(n + 1) % 4])
                )
            else:
                await task
            await asyncio.sleep(0.5)

    async def _grant(
        self,
        client: httpx.AsyncClient,
        idem: str,
        acked: Acked,
        amount: str,
        door: tuple[str, str],
    ) -> None:
        doors = self.doors()
        for attempt in range(40):
            rec, response = await self.send(
                client,
                "grant",
                "POST",
                f"/api/v1/admin/users/{acked.user_id}/credits",
                door=door,
                key=self.admin_key,
                body={"amount": amount, "reason": "scale test"},
                headers={"Idempotency-Key": idem},
            )
            if response is not None and 200 <= rec.status < 300:
                self.state.grants_acked[idem] = acked
                return
            if response is not None and rec.status < 500 and rec.status != 429:
                self.state.grants_given_up.append(f"{idem}: {rec.status} {response.text[:200]}")
                return
            door = doors[(doors.index(door) + 1) % len(doors)]  # same key, another door
            await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
        self.state.grants_given_up.append(f"{idem}: no answer after 40 tries")

    async def spending_worker(self, client: httpx.AsyncClient) -> None:
        while self.running():
            _, key = self._rng.choice(self.payers)
            await self.send(
                client,
                "spending_check",
                "POST",
                "/api/v1/guardrails/spending/check",
                key=key,
                body={"estimated_cost": "0.010000"},
            )
            await self.send(client, "spending", "GET", "/api/v1/guardrails/spending", key=key)
            await asyncio.sleep(0.5)

    async def rental_worker(self, client: httpx.AsyncClient, user_id: str, key: str) -> None:
        """Rent an offer, let it run a while, destroy it; again until the end."""
        while self.running():
            offer = next(self.offers, None)
            if offer is None:
                return
            idem = f"rent-{uuid.uuid4()}"
            instance_id = None
            for _ in range(20):
                rec, response = await self.send(
                    client,
                    "rent",
                    "POST",
                    f"/api/v1/gpu/instances/vast.ai/{offer}",
                    key=key,
                    body={"image": "scale/ping:1", "ports": [8000]},
                    headers={"Idempotency-Key": idem},
                )
                if response is not None and rec.status == 201:
                    instance_id = response.json()["instance"]["id"]
                    break
                if response is not None and rec.status < 500 and rec.status != 429:
                    break
                await asyncio.sleep(1.0)
            if instance_id is None:
                await asyncio.sleep(2)
                continue
            self.state.rentals[instance_id] = user_id
            await self._sleep(self._rng.uniform(8, 16))
            await self.destroy(client, key, instance_id)

    async def destroy(self, client: httpx.AsyncClient, key: str, instance_id: str) -> None:
        """Destroy until it is done, waiting what a 429/503 says (the payer's own proxy load
        can use up its per-minute limit), for at most 90 s."""
        give_up = time.monotonic() + 90
        while True:
            rec, response = await self.send(
                client, "destroy", "DELETE", f"/api/v1/gpu/instances/vast.ai/{instance_id}", key=key
            )
            if rec.status == 200:
                self.state.destroyed.add(instance_id)
                return
            if time.monotonic() >= give_up:
                return
            wait = 1.0
            if response is not None and response.headers.get("retry-after", "").isdigit():
                wait = min(float(response.headers["retry-after"]), 30.0)
            await asyncio.sleep(max(wait, 0.5))

    async def rate_worker(self, client: httpx.AsyncClient) -> None:
        """Bursts of 24 at once, 6 through each door, every 4 s: above the limit."""
        doors = self.doors()
        while self.running():
            started = time.monotonic()
            await asyncio.gather(
                *(
                    self.send(
                        client,
                        "rate",
                        "GET",
                        "/api/v1/billing/credits",
                        door=doors[n % len(doors)],
                        key=self.rate_key,
                    )
                    for n in range(24)
                )
            )
            await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - started)))

    async def ws_worker(self, key: str) -> None:
        from websockets.asyncio.client import connect

        url = self.nginx.replace("http://", "ws://") + "/ws"
        while self.running():
            try:
                async with connect(url, additional_headers={"X-API-Key": key}) as ws:
                    self.state.ws_connects += 1
                    await ws.send(json.dumps({"type": "subscribe", "topics": ["account"]}))
                    while self.running():
                        try:
                            await asyncio.wait_for(ws.recv(), timeout=1.0)
                            self.state.ws_messages += 1
                        except TimeoutError:
                            continue
            except Exception:
                await asyncio.sleep(0.5)

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.running():
            await asyncio.sleep(0.2)

    async def run(self, first_rentals: dict[str, str]) -> None:
        # idle connections are dropped before the servers' 5 s keep-alive ends (no race)
        limits = httpx.Limits(
            max_connections=200, max_keepalive_connections=50, keepalive_expiry=2.0
        )
        async with httpx.AsyncClient(limits=limits) as client:
            workers = [self.grant_worker(client), self.spending_worker(client)]
            workers.append(self.rate_worker(client))
            for user_id, key in self.payers:
                workers.append(self.proxy_worker(client, key))
                workers.append(self.rental_worker(client, user_id, key))
                workers.append(self.ws_worker(key))
            await asyncio.gather(*workers)
            # the long-lived rentals (one per payer) end with the run
            keys = dict(self.payers)
            for instance_id, user_id in first_rentals.items():
                await self.destroy(client, keys[user_id], instance_id)
            # and any rental whose destroy gave up during the run
            for instance_id, user_id in list(self.state.rentals.items()):
                if instance_id not in self.state.destroyed:
                    await self.destroy(client, keys[user_id], instance_id)
