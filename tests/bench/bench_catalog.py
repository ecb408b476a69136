"""Marketplace benchmark: the catalog across three slow providers, and renting 16 GPUs at once.

``make bench-catalog`` (= ``.venv/bin/python -m tests.bench.bench_catalog``):

* **catalog, cold**: ``MarketplaceService.catalog`` over three sandbox providers registered as
  ``sandbox-a``/``-b``/``-c``, each answering ``search`` after 100 ms (``search_delay=0.1``),
  with the cache cleared before every query. Aim: close to one provider's latency (the three
  are queried concurrently), far below the 300 ms of asking them one after the other. The same
  query against one such provider alone is measured alongside as the reference.
* **catalog, warm**: the same query answered from the cache. Aim: p50 under 5 ms.
* **rent 16**: one user (credits granted) rents 16 sandbox GPUs concurrently through
  ``MarketplaceService.rent`` (credit hold, provider rent, instance saved), each is refreshed
  until running and its endpoint answers ``/health``, then all 16 are destroyed concurrently
  (billing stopped, hold released, server stopped). Seconds per phase and in total.

Everything runs in this process on a temporary SQLite database (the embedded default). Before
each part it waits for a quiet machine like the other benchmarks (``--max-wait``,
``$BENCH_WAIT_UNTIL``). Writes ``bench-results/catalog.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

from domain.marketplace import OfferQuery
from domain.services.marketplace import MarketplaceConfig, MarketplaceService, RentSpec
from infrastructure.providers.sandbox import SandboxProvider
from infrastructure.settings import load_settings
from interfaces.bootstrap import Container, bootstrap
from tests.bench.harness import Quiet, describe, loadavg, machine_facts
from tests.support.http import JWT_SECRET

ROOT = Path(__file__).resolve().parents[2]
USD = 1_000_000
PROVIDER_LATENCY_S = 0.1
WARM_AIM_MS = 5.0


class NamedSandbox(SandboxProvider):
    """A sandbox marketplace under another name, so that several can be registered at once."""

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(**options)
        self._name = name

    @property
    def name(self) -> str:
        return self._name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cold", type=int, default=30, help="cold catalog queries")
    p.add_argument("--warm", type=int, default=2000, help="warm (cached) catalog queries")
    p.add_argument("--gpus", type=int, default=16, help="GPUs rented at once")
    p.add_argument("--rounds", type=int, default=3, help="rent/destroy rounds; medians")
    p.add_argument("--quiet-load", type=float, default=1.0)
    p.add_argument("--max-wait", type=float, default=900.0, help="seconds, all parts")
    p.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "catalog.json")
    return p.parse_args(argv)


def _market(c: Container, names: list[str]) -> MarketplaceService:
    providers = {
        n: NamedSandbox(n, search_delay=PROVIDER_LATENCY_S, provisioning_delay=0.0) for n in names
    }
    return MarketplaceService(c.ledger, providers, clock=c.ledger.clock, config=MarketplaceConfig())


async def _aclose(market: MarketplaceService) -> None:
    for provider in market.providers.values():
        await provider.aclose()


async def _cold_ms(market: MarketplaceService, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        market._cache.clear()
        start = time.perf_counter()
        result = await market.catalog(OfferQuery())
        samples.append((time.perf_counter() - start) * 1000)
        assert result.offers, "no offers"
        assert not result.errors, result.errors
    return samples


async def _warm_ms(market: MarketplaceService, n: int) -> list[float]:
    await market.catalog(OfferQuery())  # fill the cache
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await market.catalog(OfferQuery())
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def bench_catalog(c: Container, args: argparse.Namespace) -> dict[str, Any]:
    three = _market(c, ["sandbox-a", "sandbox-b", "sandbox-c"])
    one = _market(c, ["sandbox-a"])
    try:
        count = len((await three.catalog(OfferQuery())).offers)
        await one.catalog(OfferQuery())
        cold_one: list[float] = []
        cold_three: list[float] = []
        for _ in range(args.cold):  # interleaved, so that drift hits both sides
            cold_one += await _cold_ms(one, 1)
            cold_three += await _cold_ms(three, 1)
        warm = await _warm_ms(three, args.warm)
    finally:
        await _aclose(three)
        await _aclose(one)
    return {
        "providers": 3,
        "provider_latency_ms": PROVIDER_LATENCY_S * 1000,
        "offers_per_query": count,
        "cold_one_provider": describe(cold_one),
        "cold_three_providers": describe(cold_three),
        "warm_three_providers": describe(warm),
        "sequential_would_be_ms": 3 * PROVIDER_LATENCY_S * 1000,
    }


async def _until_running(market: MarketplaceService, instance_id: UUID) -> str:
    deadline = time.monotonic() + 30
    while True:
        gpu = await market.refresh(instance_id)
        if gpu.state == "running":
            return f"http://{gpu.host}:{gpu.port}"
        if gpu.state not in {"requested", "provisioning"} or time.monotonic() > deadline:
            raise RuntimeError(f"{instance_id} ended {gpu.state}: {gpu.reason}")
        await asyncio.sleep(0.02)


async def _rent_round(
    market: MarketplaceService, owner: str, offers: list[str], tag: str
) -> dict[str, Any]:
    provider = next(iter(market.providers))
    spec = RentSpec(image="bench")
    t0 = time.perf_counter()
    rented = await asyncio.gather(
        *(
            market.rent(owner, provider, offer, spec, f"{tag}-{i}")
            for i, offer in enumerate(offers)
        ),
        return_exceptions=True,
    )
    t1 = time.perf_counter()
    gpus = [g for g in rented if not isinstance(g, BaseException)]
    errors = [repr(g) for g in rented if isinstance(g, BaseException)]
    endpoints = await asyncio.gather(*(_until_running(market, g.id) for g in gpus))
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(*(client.get(f"{e}/health") for e in endpoints))
    healthy = sum(1 for a in answers if a.status_code == 200)
    t2 = time.perf_counter()
    done = await asyncio.gather(*(market.destroy(g.id, actor=owner) for g in gpus))
    t3 = time.perf_counter()
    return {
        "rented": len(gpus),
        "healthy": healthy,
        "terminated": sum(1 for g in done if g.state == "terminated"),
        "errors": errors[:5],
        "rent_s": round(t1 - t0, 3),
        "ready_s": round(t2 - t1, 3),
        "destroy_s": round(t3 - t2, 3),
        "total_s": round(t3 - t0, 3),
    }


async def bench_rent(c: Container, args: argparse.Namespace, quiet: Quiet) -> dict[str, Any]:
    user = c.users.create("bench-rent@example.com", "bench-password", "Bench")
    c.ledger.grant(user.id, 10_000 * USD, key="bench-rent-grant")
    market = MarketplaceService(
        c.ledger,
        {"sandbox": SandboxProvider(provisioning_delay=0.0)},
        clock=c.ledger.clock,
    )
    rounds: list[dict[str, Any]] = []
    out: dict[str, Any] = {"gpus": args.gpus}
    try:
        catalog = await market.catalog(OfferQuery(limit=500))
        ids = [o.offer_id for o in catalog.offers]
        offers = [ids[i % len(ids)] for i in range(args.gpus)]  # the cheapest first
        await _rent_round(market, user.id, offers[:1], "warmup")
        with quiet.measure("rent", out):
            for index in range(args.rounds):
                rounds.append(await _rent_round(market, user.id, offers, f"round{index}"))
    finally:
        await _aclose(market)
    view = c.ledger.account(user.id)
    out["rounds"] = rounds
    out["held_after_usd"] = view.held / USD
    for key in ("rent_s", "ready_s", "destroy_s", "total_s"):
        out[key] = round(statistics.median(r[key] for r in rounds), 3)
    return out


def _report(catalog: dict[str, Any], rent: dict[str, Any]) -> None:
    one, three = catalog["cold_one_provider"], catalog["cold_three_providers"]
    warm = catalog["warm_three_providers"]
    print(f"{'measure':<44}{'p50 ms':>10}{'p95 ms':>10}{'n':>7}")
    for name, row in (
        ("catalog cold, 1 provider (100 ms)", one),
        ("catalog cold, 3 providers (100 ms each)", three),
        ("catalog warm (cached), 3 providers", warm),
    ):
        print(f"{name:<44}{row['median_ms']:>10.2f}{row['p95_ms']:>10.2f}{row['n']:>7}")
    print(
        f"cold 3 providers / 1 provider: {three['median_ms'] / one['median_ms']:.2f} "
        f"(1.0 = fully concurrent; sequential would be 3.0 = "
        f"{catalog['sequential_would_be_ms']:.0f} ms)"
    )
    print(f"warm p50 {warm['median_ms']:.3f} ms (aim < {WARM_AIM_MS:g} ms)")
    print(
        f"rent {rent['gpus']} sandbox GPUs at once, median of {len(rent['rounds'])}: "
        f"rent {rent['rent_s']:.2f} s, until all running+healthy {rent['ready_s']:.2f} s, "
        f"destroy {rent['destroy_s']:.2f} s, total {rent['total_s']:.2f} s"
    )
    print(f"  credits still held after the rounds: {rent['held_after_usd']:.6f} USD")
    for r in rent["rounds"]:
        print(
            f"  round: rented {r['rented']}, healthy {r['healthy']}, terminated "
            f"{r['terminated']}, total {r['total_s']:.2f} s, errors {r['errors'] or 'none'}"
        )


async def run(c: Container, args: argparse.Namespace, quiet: Quiet) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with quiet.measure("catalog", out):
        out.update(await bench_catalog(c, args))
    return {"catalog": out, "rent": await bench_rent(c, args, quiet)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = Quiet.for_run(enabled=not args.no_wait, below=args.quiet_load, max_wait=args.max_wait)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    data_dir = Path(tempfile.mkdtemp(prefix="gpuproxy-bench-catalog-"))
    env = {"DATA_DIR": str(data_dir), "JWT_SECRET": JWT_SECRET, "SANDBOX_PROVIDER_ENABLED": "0"}
    c = bootstrap(load_settings(env, env_file=None))
    try:
        results = asyncio.run(run(c, args, quiet))
    finally:
        c.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    _report(results["catalog"], results["rent"])
    failed = [r for r in results["rent"]["rounds"] if r["healthy"] != args.gpus]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "when": when,
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_facts(),
        "load_at_end": loadavg(),
        "aims": {
            "cold_three_p50_close_to_ms": PROVIDER_LATENCY_S * 1000,
            "warm_p50_below_ms": WARM_AIM_MS,
        },
        **results,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
