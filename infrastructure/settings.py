"""Typed settings from the environment and an optional ``.env`` file (the seed's names).

An invalid value stops start-up with a ``ConfigError`` that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from domain.guardrails import WINDOW_NAMES, GuardrailPolicy, env_name
from domain.money import usd_to_micros

TRUE = {"1", "true", "yes", "on", "y", "t"}
FALSE = {"0", "false", "no", "off", "n", "f", ""}


class ConfigError(ValueError):
    """A configuration variable has an invalid value."""


@dataclass(frozen=True)
class Settings:
    """Everything the composition root needs, already validated."""

    db_type: str = "sqlite"
    db_name: str = "gpuproxy.db"
    db_host: str = "localhost"
    db_port: int = 5432
    db_user: str = "postgres"
    db_password: str = field(default="", repr=False)
    db_max_conns: int = 20
    data_dir: Path = Path("./data")
    guardrails: GuardrailPolicy = field(default_factory=GuardrailPolicy)
    projection_poll_interval: float = 1.0
    log_level: str = "INFO"

    @property
    def sqlite_path(self) -> Path:
        path = Path(self.db_name)
        return path if path.is_absolute() else self.data_dir / path

    @property
    def postgres_conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            dbname=self.db_name,
            host=self.db_host,
            port=self.db_port,
            user=self.db_user,
            password=self.db_password or None,
        )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range ({low}..{high})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range ({low}..{high})")
    return value


def _guardrails(env: Mapping[str, str]) -> GuardrailPolicy:
    limits: dict[str, int] = {}
    for window in WINDOW_NAMES:
        name = env_name(window)
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            micros = usd_to_micros(raw, field=name)
        except ValueError as exc:  # pragma: no cover - DomainError is not a ValueError
            raise ConfigError(str(exc)) from None
        except Exception as exc:
            raise ConfigError(f"{name}={raw!r}: {exc}") from None
        if micros < 0:
            raise ConfigError(f"{name}={raw!r} must not be negative (0 turns the window off)")
        limits[window] = micros
    return GuardrailPolicy(enabled=_bool(env, "GUARDRAILS_ENABLED", False), limits=limits)


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Read settings: the process environment wins over the ``.env`` file."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    env = merged

    db_type = env.get("DB_TYPE", "sqlite").strip().lower() or "sqlite"
    if db_type not in {"sqlite", "postgres"}:
        raise ConfigError(f"DB_TYPE={db_type!r} is not supported (use sqlite or postgres)")
    default_name = "gpuproxy.db" if db_type == "sqlite" else "gpuproxy"
    db_name = env.get("DB_NAME", "").strip() or default_name
    log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(f"LOG_LEVEL={log_level!r} is not a log level")
    return Settings(
        db_type=db_type,
        db_name=db_name,
        db_host=env.get("DB_HOST", "localhost").strip() or "localhost",
        db_port=_int(env, "DB_PORT", 5432, 1, 65535),
        db_user=env.get("DB_USER", "postgres").strip() or "postgres",
        db_password=env.get("DB_PASSWORD", ""),
        db_max_conns=_int(env, "DB_MAX_CONNS", 20, 2, 1000),
        data_dir=Path(env.get("DATA_DIR", "./data").strip() or "./data"),
        guardrails=_guardrails(env),
        projection_poll_interval=_float(env, "PROJECTION_POLL_INTERVAL", 1.0, 0.01, 60.0),
        log_level=log_level,
    )
