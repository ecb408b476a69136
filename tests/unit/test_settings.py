"""Settings: defaults, validation that names the bad variable, and .env precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from domain.guardrails import GuardrailPolicy
from infrastructure.settings import ConfigError, Settings, load_settings


def test_defaults() -> None:
    settings = load_settings({}, env_file=None)
    assert settings == Settings()
    assert settings.db.type == "sqlite"
    assert settings.db.name == "gpuproxy.db"
    assert settings.db.data_dir == Path("./data")
    assert settings.db.sqlite_path == Path("data") / "gpuproxy.db"
    assert settings.db.host == "localhost"
    assert settings.db.port == 5432
    assert settings.db.user == "postgres"
    assert settings.db.password == ""
    assert settings.db.max_conns == 20
    assert settings.ledger.projection_poll_interval == 1.0
    assert settings.log.level == "INFO"
    assert settings.ledger.guardrails == GuardrailPolicy(enabled=False, limits={})


def test_postgres_defaults_and_values() -> None:
    settings = load_settings(
        {
            "DB_TYPE": " Postgres ",
            "DB_HOST": "db.internal",
            "DB_PORT": "6543",
            "DB_USER": "ledger",
            "DB_PASSWORD": "s3cret",
            "DB_MAX_CONNS": "2",
            "LOG_LEVEL": "debug",
            "PROJECTION_POLL_INTERVAL": "0.25",
        },
        env_file=None,
    )
    assert settings.db.type == "postgres"
    assert settings.db.name == "gpuproxy"
    assert settings.db.host == "db.internal"
    assert settings.db.port == 6543
    assert settings.db.user == "ledger"
    assert settings.db.password == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.db.max_conns == 2
    assert settings.log.level == "DEBUG"
    assert settings.ledger.projection_poll_interval == 0.25


def test_absolute_sqlite_name_ignores_data_dir(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    settings = load_settings({"DB_NAME": str(db), "DATA_DIR": "/elsewhere"}, env_file=None)
    assert settings.db.sqlite_path == db
    relative = load_settings({"DB_NAME": "x.db", "DATA_DIR": str(tmp_path)}, env_file=None)
    assert relative.db.sqlite_path == tmp_path / "x.db"


def test_guardrail_limits_are_read_in_micros() -> None:
    settings = load_settings(
        {
            "GUARDRAILS_ENABLED": "true",
            "GUARDRAILS_MAX_60MIN_RATE": "12.50",
            "GUARDRAILS_MAX_48H_RATE": "0.000001",
            "GUARDRAILS_MAX_5MIN_RATE": "0",
            "GUARDRAILS_MAX_15MIN_RATE": "  ",
        },
        env_file=None,
    )
    assert settings.ledger.guardrails.enabled is True
    assert dict(settings.ledger.guardrails.limits) == {"60MIN": 12_500_000, "48H": 1, "5MIN": 0}
    assert settings.ledger.guardrails.effective_limits({}) == {"60MIN": 12_500_000, "48H": 1}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("YES", True), ("1", True), ("on", True), ("false", False), ("0", False)],
)
def test_guardrails_enabled_booleans(raw: str, expected: bool) -> None:
    assert (
        load_settings({"GUARDRAILS_ENABLED": raw}, env_file=None).ledger.guardrails.enabled
        is expected
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DB_TYPE", "mysql"),
        ("DB_TYPE", "postgresql"),
        ("DB_PORT", "abc"),
        ("DB_PORT", "0"),
        ("DB_PORT", "65536"),
        ("DB_PORT", "54.32"),
        ("DB_MAX_CONNS", "1"),
        ("DB_MAX_CONNS", "1001"),
        ("GUARDRAILS_ENABLED", "maybe"),
        ("GUARDRAILS_MAX_60MIN_RATE", "-1"),
        ("GUARDRAILS_MAX_60MIN_RATE", "abc"),
        ("GUARDRAILS_MAX_60MIN_RATE", "1.0000001"),
        ("GUARDRAILS_MAX_60MIN_RATE", "NaN"),
        ("GUARDRAILS_MAX_72H_RATE", "Infinity"),
        ("GUARDRAILS_MAX_5MIN_RATE", "1e12"),
        ("PROJECTION_POLL_INTERVAL", "0"),
        ("PROJECTION_POLL_INTERVAL", "nan"),
        ("PROJECTION_POLL_INTERVAL", "soon"),
        ("LOG_LEVEL", "verbose"),
    ],
)
def test_invalid_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value}, env_file=None)
    assert variable in str(info.value)


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "DB_TYPE=postgres\n"
        "DB_NAME=from_file\n"
        "DB_PORT=6000\n"
        "GUARDRAILS_ENABLED=true\n"
        "GUARDRAILS_MAX_60MIN_RATE=5\n",
        encoding="utf-8",
    )
    settings = load_settings({"DB_PORT": "7000", "GUARDRAILS_MAX_60MIN_RATE": "9"}, env_file)
    assert settings.db.type == "postgres"
    assert settings.db.name == "from_file"
    assert settings.db.port == 7000
    assert settings.ledger.guardrails.enabled is True
    assert dict(settings.ledger.guardrails.limits) == {"60MIN": 9_000_000}


def test_env_file_accepts_str_path(tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("DB_HOST=file-host\n", encoding="utf-8")
    assert load_settings({}, str(env_file)).db.host == "file-host"


def test_invalid_value_in_env_file_is_reported(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DB_MAX_CONNS=lots\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="DB_MAX_CONNS"):
        load_settings({}, env_file)
    # The environment overrides the bad file value.
    assert load_settings({"DB_MAX_CONNS": "5"}, env_file).db.max_conns == 5


def test_missing_env_file_is_ignored(tmp_path: Path) -> None:
    assert load_settings({}, tmp_path / "absent.env") == Settings()


def test_process_environment_is_used_when_environ_is_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):  # only what is set below may count
        monkeypatch.delenv(name)
    monkeypatch.setenv("DB_PORT", "1234")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    settings = load_settings(None, env_file=None)
    assert settings.db.port == 1234
    assert settings.log.level == "WARNING"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://127.0.0.1:8080"),  # a wildcard listener is advertised as loopback
        ({"HOST": "10.1.2.3", "PORT": "9000"}, "http://10.1.2.3:9000"),
        ({"HOST": "::1"}, "http://[::1]:8080"),
        ({"PUBLIC_URL": "https://gpu.example.com/", "HOST": "10.1.2.3"}, "https://gpu.example.com"),
        ({"PUBLIC_URL": "https://example.com/gpu"}, "https://example.com/gpu"),
    ],
)
def test_base_url_is_public_url_or_the_listening_address(
    env: dict[str, str], expected: str
) -> None:
    assert load_settings(env, env_file=None).http.base_url == expected


@pytest.mark.parametrize(
    "value", ["gpu.example.com", "ftp://gpu.example.com", "https://", "https://a.example/?x=1"]
)
def test_public_url_must_be_a_plain_http_url(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"PUBLIC_URL": value}, env_file=None)
    assert "PUBLIC_URL" in str(info.value)


def test_an_empty_boolean_is_its_default() -> None:
    """``SANDBOX_PROVIDER_ENABLED=`` as .env.example ships it keeps the sandbox market on."""
    settings = load_settings({"SANDBOX_PROVIDER_ENABLED": ""}, env_file=None)
    assert settings.providers.sandbox_enabled
    assert not load_settings(
        {"SANDBOX_PROVIDER_ENABLED": "false"}, env_file=None
    ).providers.sandbox_enabled
