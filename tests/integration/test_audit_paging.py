"""``aiserve-gpuproxy-admin audit --limit N``: the first N events from ``--since`` on (issue 24)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from infrastructure.settings import Settings
from interfaces.cli.admin import main
from tests.support.pg import env_of


@pytest.fixture
def admin(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., int]:
    for key, value in env_of(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env

    def run(*argv: str) -> int:
        return main(list(argv))

    assert run("migrate") == 0
    return run


def test_audit_limit_returns_a_page_from_since(
    admin: Callable[..., int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin("create-user", "pat@example.com", "s3cret-pass", "Pat") == 0
    for i in range(5):
        assert admin("grant-credits", "pat@example.com", "1.00", "--idempotency-key", f"g{i}") == 0
    capsys.readouterr()
    assert admin("audit", "pat@example.com", "--json") == 0
    every = json.loads(capsys.readouterr().out)["events"]
    assert [e["version"] for e in every] == [1, 2, 3, 4, 5, 6]
    assert admin("audit", "pat@example.com", "--limit", "2", "--json") == 0
    assert [e["version"] for e in json.loads(capsys.readouterr().out)["events"]] == [1, 2]
    since = every[3]["at"]
    assert admin("audit", "pat@example.com", "--since", since, "--limit", "2", "--json") == 0
    page = json.loads(capsys.readouterr().out)["events"]
    assert [e["version"] for e in page] == [e["version"] for e in every if e["at"] >= since][:2]
    with pytest.raises(SystemExit):
        admin("audit", "pat@example.com", "--limit", "0")
    assert "--limit" in capsys.readouterr().err
