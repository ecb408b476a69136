"""The user CLI (``aiserve-gpuproxy-client``) against a real server process on SQLite."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from interfaces.cli.client import main
from tests.support.http import JWT_SECRET, env_of, server_process

ROOT = Path(__file__).resolve().parents[2]
GRANT = Decimal("50.00")


@dataclass(frozen=True)
class Server:
    url: str
    key: str


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def _serve(root: Path, provisioning_delay: str) -> Iterator[Server]:
    """A user with credits and an API key, then a real server on the same data directory."""
    env = {
        "DATA_DIR": str(root / "data"),
        "JWT_SECRET": JWT_SECRET,
        "SANDBOX_PROVISIONING_DELAY": provisioning_delay,
        "RATE_LIMIT_PER_MINUTE": "100000",
    }
    settings = load_settings(env, env_file=None)
    c = bootstrap(settings)
    try:
        user = c.users.create("cli@example.com", "correct-horse-battery", "CLI")
        c.ledger.grant(user.id, int(GRANT * 1_000_000), key="cli-grant")
        _, key = c.auth.keys.create(user.id, "cli")
        c.runner.catch_up()
    finally:
        c.close()
    server_env = {
        **env_of(settings),
        "SANDBOX_PROVISIONING_DELAY": provisioning_delay,
        "INSTANCE_POLL_SECONDS": "0.1",
        "LOG_LEVEL": "WARNING",
    }
    with server_process(server_env, log_file=root / "server.log") as url:
        yield Server(url, key)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(tmp_path_factory.mktemp("cli"), "0")


@pytest.fixture
def cli(server: Server, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    return _runner(server, capsys)


def _runner(server: Server, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def run(*argv: str) -> Result:
        capsys.readouterr()
        try:
            code = main(["-server", server.url, "-key", server.key, *argv])
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def _one_line_error(result: Result, code: int) -> str:
    assert result.code == code, result
    assert result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    return result.err


def _eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """The read models (rentals, credits) follow the event log within moments."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_list_as_table_and_json(cli: Callable[..., Result]) -> None:
    table = cli("list", "--limit", "5")
    assert table.code == 0, table
    assert table.err == ""
    assert "sbx-a4000-1x-de" in table.out  # the cheapest sandbox offer, id unwrapped
    for header in ("provider", "gpu", "VRAM GB", "USD/h", "location"):
        assert header in table.out
    assert "5 offer(s)" in table.out

    data = cli("--json", "list", "--gpu", "4090").json()
    assert data["errors"] == {}
    assert data["count"] == len(data["offers"]) > 0
    assert all("4090" in o["gpu_model"] for o in data["offers"])

    after = cli("list", "sandbox", "--max-price", "0.40", "--min-vram", "24", "--json").json()
    prices = [Decimal(o["price_per_hour"]) for o in after["offers"]]
    assert prices == sorted(prices)
    assert all(p <= Decimal("0.40") for p in prices)
    assert all(o["vram_gb"] >= 24 for o in after["offers"])
    assert {o["provider"] for o in after["offers"]} == {"sandbox"}

    rows = cli("list", "--region", "US", "--num-gpus", "8", "--limit", "1", "--json").json()
    assert rows["count"] == 1
    assert rows["offers"][0]["num_gpus"] == 8
    assert "US" in rows["offers"][0]["location"]


def test_create_rentals_instance_destroy_credits(cli: Callable[..., Result]) -> None:
    created = cli(
        "create",
        "sandbox",
        "sbx-3090-1x-us",
        "--image",
        "python:3.12-slim",
        "--port",
        "8000",
        "--port",
        "9000",
        "--idempotency-key",
        "cli-first",
        "--json",
    )
    assert created.code == 0, created
    instance = created.json()["instance"]
    assert instance["offer_id"] == "sbx-3090-1x-us"
    assert instance["image"] == "python:3.12-slim"
    assert instance["state"] == "running"  # no provisioning delay on this server
    again = cli("create", "sandbox", "sbx-3090-1x-us", "--idempotency-key", "cli-first", "--json")
    assert again.json()["instance"]["id"] == instance["id"]  # one rental, not two

    def listed() -> list[dict[str, Any]]:
        return [r for r in cli("rentals", "--json").json()["rentals"] if r["id"] == instance["id"]]

    assert _eventually(listed), "the rental never showed up"
    table = cli("rentals")
    assert table.code == 0
    assert instance["id"] in table.out
    assert "running" in table.out

    shown = cli("instance", "sandbox", instance["id"])
    assert shown.code == 0
    assert instance["id"] in shown.out
    assert "sbx-3090-1x-us" in shown.out
    detail = cli("instance", "sandbox", instance["id"], "--json").json()["instance"]
    assert detail["state"] == "running"
    assert httpx.get(f"{detail['endpoint']}/health", timeout=5).status_code == 200

    destroyed = cli("--json", "destroy", "sandbox", instance["id"])
    assert destroyed.code == 0, destroyed
    final = destroyed.json()["instance"]
    assert final["state"] == "terminated"
    billed = Decimal(final["billed"])
    assert Decimal(0) <= billed < Decimal("0.22")  # seconds of an RTX 3090 at 0.22 USD/h

    def settled() -> dict[str, Any] | None:
        data = cli("credits", "--json").json()
        return data if data["credits_held"] == "0.000000" else None

    credits = _eventually(settled)
    assert credits, "the hold was never released"
    assert Decimal(credits["credits_remaining"]) == GRANT - billed
    table = cli("credits")
    assert table.code == 0
    assert "credits_remaining" in table.out
    assert _eventually(lambda: [r["state"] for r in listed()] == ["terminated"])


def test_bad_arguments_exit_2_in_one_line(cli: Callable[..., Result]) -> None:
    for argv in (
        ("create", "sandbox"),
        ("create", "sandbox", "sbx-3090-1x-us", "--port", "0"),
        ("create", "sandbox", "sbx-3090-1x-us", "--wait", "--timeout", "-1"),
        ("list", "--min-vram", "lots"),
        ("list", "--max-price", "abc"),
        ("list", "--max-price", "0.0000001"),
        ("list", "--num-gpus", "0"),
        ("list", "--limit", "501"),
        ("instance", "sandbox", "not-a-uuid"),
        ("destroy", "sandbox"),
        ("no-such-command",),
    ):
        err = _one_line_error(cli(*argv), 2)
        assert "error:" in err, argv


def test_missing_key_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPUPROXY_API_KEY", raising=False)
    code = main(["-server", "http://127.0.0.1:9", "rentals"])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_refusals_exit_1_in_one_line(cli: Callable[..., Result]) -> None:
    err = _one_line_error(cli("create", "sandbox", "no-such-offer"), 1)
    assert err.startswith("error: 404")
    assert "offer" in err.lower()
    err = _one_line_error(cli("destroy", "sandbox", str(uuid.uuid4())), 1)
    assert err.startswith("error: 404")
    err = _one_line_error(cli("instance", "sandbox", str(uuid.uuid4())), 1)
    assert err.startswith("error: 404")
    err = _one_line_error(cli("list", "nowhere"), 2)  # the server refuses the input: 422
    assert "unknown provider" in err


def test_unreachable_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["-server", "http://127.0.0.1:9", "-key", "gpx_x", "create", "sandbox", "o"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot reach" in err
    assert "--idempotency-key" in err  # a retry with the same key cannot rent twice


def test_real_process_json_output(server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.cli.client", "list", "--limit", "2", "--json"],
        cwd=ROOT,
        env={"GPUPROXY_SERVER": server.url, "GPUPROXY_API_KEY": server.key, "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["count"] == 2


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(tmp_path_factory.mktemp("cli-slow"), "1.0")


def test_create_wait_polls_until_running(
    slow_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _runner(slow_server, capsys)
    late = cli("create", "sandbox", "sbx-a4000-1x-de", "--wait", "--timeout", "0.2", "--json")
    err = _one_line_error(late, 1)
    assert "still provisioning" in err
    assert "destroy sandbox" in err
    assert late.json()["instance"]["state"] == "provisioning"
    assert cli("destroy", "sandbox", late.json()["instance"]["id"]).code == 0

    started = time.monotonic()
    ready = cli(
        "create", "sandbox", "sbx-a4000-1x-de", "--wait", "--interval", "0.1", "--timeout", "30"
    )
    assert ready.code == 0, ready
    assert time.monotonic() - started >= 0.9  # it waited for the provisioning delay
    assert "running" in ready.out
    assert "http://127.0.0.1:" in ready.out
    instance_id = next(  # a pipe: the field/value table is tab-separated
        line.split("\t")[1] for line in ready.out.splitlines() if line.startswith("id\t")
    )
    assert cli("destroy", "sandbox", instance_id).code == 0


def test_reserve_and_release(cli: Callable[..., Result]) -> None:
    reserved = cli("reserve", "3", "--gpu", "4090", "--provider", "sandbox", "--json")
    assert reserved.code == 0, reserved
    reservation = reserved.json()
    assert reservation["state"] == "confirmed"
    # 3 GPUs: 1x, 1x, then the 2x 4090 is skipped (it would make 4) for another 1x
    assert reservation["gpus"] == 3
    assert [m["num_gpus"] for m in reservation["members"]] == [1, 1, 1]
    assert len(reservation["instances"]) == 3
    table = cli("reserve", "3", "--gpu", "RTX 3090", "--provider", "sandbox")
    assert table.code == 0, table
    assert "gpus" in table.out  # the table shows the GPUs beside the count
    released = cli("release", reservation["id"], "--json")
    assert released.code == 0, released
    assert released.json()["state"] == "released"
    assert _one_line_error(cli("reserve", "17"), 2)


def test_proxy_lb_strategy_and_load(cli: Callable[..., Result]) -> None:
    rented = cli("--json", "create", "sandbox", "sbx-a4000-1x-de", "--wait", "--timeout", "60")
    assert rented.code == 0, rented
    instance = rented.json()["instance"]["id"]
    sent = _eventually(  # the proxy reads running instances from the read model
        lambda: (
            r
            if (
                r := cli("proxy", "http", instance, "--path", "/echo", "--data", '{"prompt": "hi"}')
            ).code
            == 0
            else None
        )
    )
    assert sent is not None
    assert json.loads(sent.out)["json"] == {"prompt": "hi"}
    assert f"200 from instance {instance}" in sent.err
    infer = cli(
        "proxy",
        "openinference",
        instance,
        "--model",
        "demo",
        "--data",
        '{"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}',
    )
    assert json.loads(infer.out)["outputs"][0]["data"] == [3, 5]
    refused = cli("proxy", "http", "http://169.254.169.254/latest/meta-data/")
    _one_line_error(refused, 1)
    assert "403" in refused.err
    assert cli("lb-strategy", "least_connections").out.strip() == "strategy: least_connections"
    assert cli("--json", "lb-strategy").json()["strategy"] == "least_connections"
    bad = cli("lb-strategy", "fastest")
    assert bad.code == 2
    assert "invalid choice" in bad.err
    load = cli("--json", "load", "server").json()
    assert load["strategy"] == "least_connections"
    assert instance in {i["instance_id"] for i in load["server"]["instances"]}
    assert "provider" in cli("--json", "load", "provider").json()
    assert "requests" in cli("load").out


def test_pay_without_a_configured_provider_is_a_clear_error(cli: Callable[..., Result]) -> None:
    refused = cli("pay", "10.00", "--provider", "stripe", "--method", "card:pm_card_visa")
    assert "not configured" in _one_line_error(refused, 2)  # 400: an input this server refuses
    raw = cli("pay", "10.00", "--method", "card:4242424242424242:12/30:123")
    assert "4242424242424242" not in raw.err
    listed = cli("--json", "payments")
    assert listed.code == 0
    assert listed.json() == {"payments": [], "count": 0}
