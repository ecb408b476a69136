"""What every CLI promises: exit codes (2 bad input, 1 failed), ``--json`` on every command,
full values in pipes, and a ``--help`` that names the environment it reads."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from infrastructure.settings import Settings
from interfaces import server as gpuproxyd
from interfaces.cli import admin, client, mcp_bridge
from tests.integration.test_client_cli import Server, _serve
from tests.support.http import env_of
from tests.support.pg import free_port

ROOT = Path(__file__).resolve().parents[2]
LONG_EMAIL = f"ann-rather-long-mailbox-{uuid.uuid4().hex[:8]}@a-long-domain-name.example.com"

Main = Callable[[Sequence[str] | None], int]


def _code(main: Main, argv: Sequence[str]) -> int:
    """The exit status ``main`` gives (argparse and ``fail`` exit through SystemExit)."""
    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


@pytest.fixture
def admin_env(
    sqlite_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """A migrated SQLite database with one user, in this process's environment."""
    env = env_of(sqlite_settings)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert admin.main(["migrate"]) == 0
    assert admin.main(["create-user", "ann@example.com", "s3cret-pass", "Ann"]) == 0
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(tmp_path_factory.mktemp("contract"), "0")


# ------------------------------------------------------------------ exit codes

ADMIN_CASES = [
    (("grant-credits", "ann@example.com", "-5"), 2),  # the example
    (("grant-credits", "ann@example.com", "0"), 2),
    (("grant-credits", "ann@example.com", "ten"), 2),
    (("set-cap", "ann@example.com", "-1"), 2),
    (("set-limits", "ann@example.com", "60min"), 2),
    (("statement", "ann@example.com", "--month", "2026-13"), 2),
    (("create-user", "not-an-email", "s3cret-pass", "X"), 2),  # refused by the domain: 400
    (("no-such-command",), 2),
    (("balance", "nobody@example.com"), 1),  # not found: the operation failed
    (("create-user", "ann@example.com", "s3cret-pass", "Ann"), 1),  # exists: a conflict
]


@pytest.mark.parametrize(
    ("argv", "expected"), ADMIN_CASES, ids=[" ".join(a) for a, _ in ADMIN_CASES]
)
def test_admin_exit_codes(
    admin_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    expected: int,
) -> None:
    capsys.readouterr()
    assert _code(admin.main, argv) == expected
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


CLIENT_CASES = [
    (("pay", "-5", "--method", "card:pm_card_visa"), 2),
    (("pay", "0", "--method", "card:pm_card_visa"), 2),
    (("pay", "lots", "--method", "card:pm_card_visa"), 2),
    (("reserve", "17"), 2),
    (("transactions", "--limit", "many"), 2),
    (("list", "nowhere"), 2),  # the server refuses the input (the provider field)
    (("instance", "sandbox", str(uuid.UUID(int=1))), 1),  # not found
    (("create", "sandbox", "no-such-offer"), 1),
]


@pytest.mark.parametrize(
    ("argv", "expected"), CLIENT_CASES, ids=[" ".join(a) for a, _ in CLIENT_CASES]
)
def test_client_exit_codes(
    server: Server, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], expected: int
) -> None:
    capsys.readouterr()
    assert _code(client.main, ["-server", server.url, "-key", server.key, *argv]) == expected
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err


def test_client_unreachable_server_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        _code(client.main, ["-server", f"http://127.0.0.1:{free_port()}", "-key", "k", "credits"])
        == 1
    )


MCP_CASES = [
    (("--server", "ftp://example.com", "--api-key", "gpx_x"), 2),
    (("--server", "localhost:8080", "--api-key", "gpx_x"), 2),
    (("--bogus",), 2),
    ((), 2),  # no credential
]


@pytest.mark.parametrize(("argv", "expected"), MCP_CASES, ids=[" ".join(a) for a, _ in MCP_CASES])
def test_mcp_exit_codes(
    monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], expected: int
) -> None:
    for name in ("GPUPROXY_SERVER", "GPUPROXY_API_KEY", "GPUPROXY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert _code(mcp_bridge.main, argv) == expected


def test_mcp_unreachable_server_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert _code(mcp_bridge.main, ["--server", url, "--api-key", "gpx_x"]) == 1


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (("--bogus",), {}, 2),
        (("extra",), {}, 2),
        ((), {"PORT": "not-a-port"}, 2),
        ((), {"DB_TYPE": "oracle"}, 2),
    ],
    ids=["unknown flag", "extra argument", "bad PORT", "bad DB_TYPE"],
)
def test_server_exit_codes(
    tmp_path: Path, argv: tuple[str, ...], env: dict[str, str], expected: int
) -> None:
    """Real processes: bad arguments and bad configuration exit 2 in one line."""
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent", *argv],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == expected, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert gpuproxyd.build_parser().prog in done.stderr


# ------------------------------------------------------------------ --json everywhere


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("cli", [admin, client], ids=["admin", "client"])
def test_every_command_takes_json(cli: object) -> None:
    commands = _subcommands(cli.build_parser())  # type: ignore[attr-defined]
    assert len(commands) >= 10
    missing = [
        name
        for name, sub in commands.items()
        if not any("--json" in a.option_strings for a in sub._actions)
    ]
    assert missing == []


def test_admin_writes_answer_in_json(
    admin_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*argv: str) -> object:
        capsys.readouterr()
        assert _code(admin.main, [*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert run("migrate") == {"applied": []}
    assert run("make-admin", "ann@example.com")["is_admin"] is True  # type: ignore[index]
    granted = run("grant-credits", "ann@example.com", "12.50", "--idempotency-key", "g")
    assert granted["applied"] is True  # type: ignore[index]
    assert granted["credits_remaining"] == "12.500000"  # type: ignore[index]
    limits = run("set-limits", "ann@example.com", "60min=5", "48h=default", "--reason", "r")
    assert limits["limits"] == {"60MIN": "5.000000", "48H": None}  # type: ignore[index]
    assert run("set-cap", "ann@example.com", "3")["cap"] == "3.000000"  # type: ignore[index]
    reset = run("guardrails-reset", "ann@example.com", "60min", "--reason", "ticket")
    assert reset["reset"] == ["60MIN"]  # type: ignore[index]
    rebuilt = run("rebuild-projections", "balances")
    assert [p["name"] for p in rebuilt["projections"]] == ["balances"]  # type: ignore[index]


def test_client_proxy_json_is_an_envelope(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["-server", server.url, "-key", server.key]
    assert (
        _code(client.main, [*base, "--json", "create", "sandbox", "sbx-3090-1x-us", "--wait"]) == 0
    )
    instance = json.loads(capsys.readouterr().out)["instance"]["id"]
    argv = [*base, "proxy", "http", instance, "--path", "/echo", "--data", '{"a": 1}', "--json"]
    assert _code(client.main, argv) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == 200
    assert answer["instance_id"] == instance
    assert answer["body"]["json"] == {"a": 1}
    assert _code(client.main, [*base, "destroy", "sandbox", instance]) == 0


# ------------------------------------------------------------------ pipes and help


def test_admin_users_piped_prints_whole_values(admin_env: dict[str, str]) -> None:
    """``aiserve-gpuproxy-admin users | cat``: one tab-separated line per user, nothing cut."""
    assert admin.main(["create-user", LONG_EMAIL, "s3cret-pass", "Long"]) == 0
    done = subprocess.run(
        [sys.executable, "-m", "interfaces.cli.admin", "users"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **admin_env},
        capture_output=True,  # a pipe, not a terminal
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert rows[0] == ["email", "name", "admin", "id", "created"]
    by_email = {row[0]: row for row in rows[1:]}
    assert LONG_EMAIL in by_email
    capture = subprocess.run(
        [sys.executable, "-m", "interfaces.cli.admin", "users", "--json"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **admin_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    ids = {u["email"]: u["id"] for u in json.loads(capture.stdout)}
    assert by_email[LONG_EMAIL][3] == ids[LONG_EMAIL]  # the whole id, not 16 characters


def test_verify_projections_piped_prints_whole_fingerprints(
    admin_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert _code(admin.main, ["verify-projections", "balances", "--json"]) == 0
    live = json.loads(capsys.readouterr().out)[0]["live"]
    assert len(live) > 16
    assert _code(admin.main, ["verify-projections", "balances"]) == 0
    assert f"live {live} rebuilt {live}" in capsys.readouterr().out


def test_client_tables_in_a_pipe_are_tsv(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()  # capsys is not a terminal: what `| cat` sees
    assert (
        _code(client.main, ["-server", server.url, "-key", server.key, "list", "--limit", "3"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split("\t")
    assert header[:3] == ["provider", "id", "gpu"]
    rows = [line.split("\t") for line in lines[1:4]]
    assert all(len(row) == len(header) for row in rows)
    assert rows[0][1] == "sbx-a4000-1x-de"  # whole, unfolded
    assert not any(ch in "\n".join(lines) for ch in "│┃━─")  # no box drawing


def test_client_help_names_its_environment(capsys: pytest.CaptureFixture[str]) -> None:
    assert _code(client.main, ["--help"]) == 0
    text = capsys.readouterr().out
    for name in ("GPUPROXY_API_KEY", "GPUPROXY_SERVER", "GPUPROXY_GRPC"):
        assert name in text


# ------------------------------------------------------------------ money in one format

AMOUNT = re.compile(r"-?\d+\.\d+")


def _amount_cells(out: str) -> list[str]:
    """The amounts in the USD columns of the TSV tables in ``out`` (several tables allowed)."""
    found: list[str] = []
    money_columns: set[int] = set()
    for line in out.splitlines():
        cells = line.split("\t")
        if any("USD" in c for c in cells) and not any(AMOUNT.fullmatch(c) for c in cells):
            money_columns = {i for i, c in enumerate(cells) if "USD" in c}  # a header line
            continue
        found += [c for i, c in enumerate(cells) if i in money_columns and AMOUNT.fullmatch(c)]
    return found


def test_admin_tables_show_money_with_six_decimals(
    admin_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No ``0.00`` beside ``49.958854``: every amount in a table has six decimals."""
    capsys.readouterr()
    assert _code(admin.main, ["grant-credits", "ann@example.com", "49.958854"]) == 0
    assert "granted 49.958854 USD" in capsys.readouterr().out
    capsys.readouterr()
    assert _code(admin.main, ["stats"]) == 0
    assert "balance_total\t49.958854\nheld_total\t0.000000\n" in capsys.readouterr().out
    for argv in (["balance", "ann@example.com"], ["usage", "ann@example.com"]):
        assert _code(admin.main, argv) == 0
        cells = _amount_cells(capsys.readouterr().out)
        assert cells, argv
        assert all(re.fullmatch(r"-?\d+\.\d{6}", c) for c in cells), (argv, cells)
    assert _code(admin.main, ["balance", "ann@example.com"]) == 0
    out = capsys.readouterr().out
    assert "credits_remaining\t49.958854" in out
    assert "credits_held\t0.000000" in out
    assert "\n60MIN\t0.000000\t0.000000\t" in out  # spent, held (limit: off or an amount)
    assert _code(admin.main, ["balance", "ann@example.com", "--json"]) == 0  # the API's strings
    assert json.loads(capsys.readouterr().out)["credits_held"] == "0.000000"


def test_client_tables_show_money_with_six_decimals(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["-server", server.url, "-key", server.key]
    for argv in (["credits"], ["spending"], ["transactions"], ["list", "--limit", "5"]):
        capsys.readouterr()
        assert _code(client.main, [*base, *argv]) == 0
        cells = _amount_cells(capsys.readouterr().out)
        assert cells, argv
        assert all(re.fullmatch(r"-?\d+\.\d{6}", c) for c in cells), (argv, cells)
