"""Typed settings from the environment and an optional ``.env`` file (the seed's names).

An invalid value stops start-up with a ``ConfigError`` that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from dotenv import dotenv_values

from domain.guardrails import WINDOW_NAMES, GuardrailPolicy, env_name
from domain.money import usd_to_micros

MIN_JWT_SECRET_BYTES = 32
TRUE = {"1", "true", "yes", "on", "y", "t"}
FALSE = {"0", "false", "no", "off", "n", "f"}


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
    db_pooler: str = "none"  # "pgbouncer": DB_HOST/DB_PORT is a transaction pooler
    db_direct_host: str = ""  # session work (LISTEN, advisory locks); empty: DB_HOST
    db_direct_port: int = 0  # 0: DB_PORT
    data_dir: Path = Path("./data")
    guardrails: GuardrailPolicy = field(default_factory=GuardrailPolicy)
    projection_poll_interval: float = 1.0
    hold_sweep_interval: float = 30.0  # seconds between sweeps expiring due holds
    clock_max_ahead_seconds: float = 5.0  # business time: at most this ahead of the DB clock
    log_level: str = "INFO"
    log_file: str = ""
    syslog_enabled: bool = False
    syslog_network: str = "udp"
    syslog_address: str = "localhost:514"
    syslog_facility: str = "local0"
    host: str = "0.0.0.0"  # noqa: S104 - a server binds all interfaces unless told otherwise
    port: int = 8080
    public_url: str = ""  # the origin clients reach us at (agent card, discovery); see base_url
    access_log: bool = False
    jwt_secret: str = field(default="", repr=False)
    jwt_expiration_seconds: int = 24 * 3600
    session_mode: str = "sql"
    redis_url: str = ""
    rate_limit_per_minute: int = 100
    auth_failures_per_key: int = 10  # failed API-key attempts per key id per window
    auth_failures_per_address: int = 50  # ... per client address per window
    auth_failure_window_seconds: int = 300
    auth_max_concurrent_hashes: int = 2  # argon2 API-key checks at once per process
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_048_576
    http_header_timeout: float = 10.0  # seconds to receive a request's headers
    http_keepalive_seconds: int = 5
    http_max_connections: int = 500
    forwarded_allow_ips: tuple[str, ...] = ()  # proxies whose X-Forwarded-For is believed
    workers: int = 1  # server processes on one port (PostgreSQL only above 1)
    price_markup_ppm: int = 0
    metering_interval: float = 60.0
    instance_poll_interval: float = 5.0
    reservation_timeout: float = 300.0
    reconcile_interval: float = 300.0
    lb_strategy: str = "round_robin"
    guardrails_action: str = "stop"
    sandbox_enabled: bool = True
    sandbox_provisioning_delay: float = 2.0
    vastai_api_key: str = field(default="", repr=False)
    vastai_api_url: str = "https://console.vast.ai"
    ionet_api_key: str = field(default="", repr=False)
    ionet_api_url: str = "https://api.io.solutions"
    # proxy
    allow_private_targets: bool = False
    proxy_request_price: int = 0  # micro-USD per proxied request
    proxy_lease_amount: int = 1_000_000  # micro-USD each serving process holds per user
    proxy_usage_flush_interval: float = 10.0
    usage_session_idle_minutes: int = 30  # a usage session ends after this long without requests
    proxy_connect_timeout: float = 5.0
    proxy_default_timeout: float = 300.0
    # payments
    payment_min: int = 1_000_000
    payment_max: int = 10_000_000_000
    stripe_secret_key: str = field(default="", repr=False)
    stripe_webhook_secret: str = field(default="", repr=False)
    stripe_api_base: str = "https://api.stripe.com"
    crypto_enabled: bool = False
    crypto_rpc_url: str = ""
    crypto_network: str = "ethereum"
    crypto_receiving_address: str = ""
    crypto_token_address: str = ""  # USDC contract; empty: the network's official one
    crypto_confirmations: int = 12
    crypto_payment_ttl: float = 3600.0
    crypto_max_open_requests: int = 5  # per user
    crypto_poll_interval: float = 15.0
    afterdark_api_url: str = "https://billing.afterdarksys.com"
    afterdark_api_key: str = field(default="", repr=False)
    payment_reconcile_interval: float = 60.0
    # live streams (WebSocket /ws)
    ws_poll_interval: float = 0.2  # seconds between reads of the event log by the feed
    ws_queue_size: int = 256  # messages buffered per connection before it counts as slow
    ws_ping_interval: float = 20.0
    ws_ping_timeout: float = 60.0  # close a connection silent for this long
    ws_max_replay: int = 100_000  # events a resume (``since``) may scan
    # gRPC
    grpc_enabled: bool = True
    grpc_port: int = 9090
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""

    # models
    allow_pickle_models: bool = False
    storage_backend: str = "local"
    oci_storage_namespace: str = ""
    oci_storage_bucket: str = ""
    oci_storage_endpoint: str = ""
    oci_config_file: str = ""
    oci_config_profile: str = "DEFAULT"
    oci_user: str = ""
    oci_tenancy: str = ""
    oci_fingerprint: str = ""
    oci_key_file: str = ""
    oci_region: str = ""
    oci_part_size: int = 128 * 1_048_576
    oci_max_attempts: int = 4
    storage_quota_bytes: int = 100 * 10**9
    max_upload_bytes: int = 10 * 10**9
    uploads_per_hour: int = 50
    uploads_per_day: int = 500
    model_predict_price: int = 0  # micro-USD per prediction
    model_lease_amount: int = 1_000_000
    model_cache_bytes: int = 2 * 1_073_741_824
    model_max_request_bytes: int = 16 * 1_048_576
    model_inference_threads: int = 0  # 0: one per CPU core, at most 8
    model_intra_op_threads: int = 1
    model_execution_provider: str = "auto"
    model_cuda_tf32: bool = False
    model_batching: bool = False
    model_batch_max_rows: int = 64
    model_batch_wait_ms: float = 0.0
    model_convert_timeout: float = 300.0
    model_usage_flush_interval: float = 10.0

    @property
    def base_url(self) -> str:
        """Public origin for URLs we advertise: ``PUBLIC_URL``, else the listening address
        (never a request's ``Host``)."""
        if self.public_url:
            return self.public_url
        host = self.host if self.host not in {"0.0.0.0", "::", ""} else "127.0.0.1"  # noqa: S104
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

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

    @property
    def transaction_pooler(self) -> bool:
        """True when DB_HOST/DB_PORT is PgBouncer in transaction mode (no session state)."""
        return self.db_type == "postgres" and self.db_pooler == "pgbouncer"

    @property
    def direct_conninfo(self) -> str:
        """PostgreSQL itself, for session-scoped work (LISTEN, session advisory locks)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            self.postgres_conninfo,
            host=self.db_direct_host or self.db_host,
            port=self.db_direct_port or self.db_port,
        )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default  # an empty value (``NAME=`` in an env file) is unset, as for numbers
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
    http = _http(env)
    market = _marketplace(env)
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
        db_pooler=_choice(env, "DB_POOLER", "none", {"none", "pgbouncer"}),
        db_direct_host=env.get("DB_DIRECT_HOST", "").strip(),
        db_direct_port=_int(env, "DB_DIRECT_PORT", 0, 0, 65535),
        data_dir=Path(env.get("DATA_DIR", "./data").strip() or "./data"),
        guardrails=_guardrails(env),
        projection_poll_interval=_float(env, "PROJECTION_POLL_INTERVAL", 1.0, 0.01, 60.0),
        hold_sweep_interval=_float(env, "HOLD_SWEEP_SECONDS", 30.0, 0.05, 3600.0),
        clock_max_ahead_seconds=_float(env, "CLOCK_MAX_AHEAD_SECONDS", 5.0, 0.0, 3600.0),
        log_level=log_level,
        workers=_workers(env, db_type),
        **http,
        **market,
        **_proxy(env),
        **_payments(env),
        **_models(env),
        **_grpc(env, http["port"]),
        **_streams(env),
    )


def _streams(env: Mapping[str, str]) -> dict[str, Any]:
    return {
        "ws_poll_interval": _float(env, "WS_POLL_INTERVAL", 0.2, 0.01, 10.0),
        "ws_queue_size": _int(env, "WS_QUEUE_SIZE", 256, 4, 100_000),
        "ws_ping_interval": _float(env, "WS_PING_INTERVAL", 20.0, 0.1, 3600.0),
        "ws_ping_timeout": _float(env, "WS_PING_TIMEOUT", 60.0, 0.2, 86400.0),
        "ws_max_replay": _int(env, "WS_MAX_REPLAY", 100_000, 1, 100_000_000),
    }


def _redis_url(env: Mapping[str, str]) -> str:
    url = env.get("REDIS_URL", "").strip()
    if url:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"REDIS_URL={url!r} must start with redis://, rediss:// or unix://")
        return url
    host = env.get("REDIS_HOST", "").strip()
    if not host:
        return ""
    port = _int(env, "REDIS_PORT", 6379, 1, 65535)
    password = env.get("REDIS_PASSWORD", "")
    db = _int(env, "REDIS_DB", 0, 0, 1024)
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"


def _choice(env: Mapping[str, str], name: str, default: str, allowed: set[str]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(sorted(allowed))}")
    return value


def _public_url(env: Mapping[str, str]) -> str:
    raw = env.get("PUBLIC_URL", "").strip()
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"PUBLIC_URL={raw!r} must be an http(s) URL without query or fragment")
    return raw.rstrip("/")


def _http(env: Mapping[str, str]) -> dict[str, Any]:
    secret = env.get("JWT_SECRET", "")
    if secret and len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ConfigError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long")
    redis_url = _redis_url(env)
    session_mode = _choice(env, "SESSION_MODE", "sql", {"sql", "redis", "balanced"})
    if session_mode != "sql" and not redis_url:
        raise ConfigError(f"SESSION_MODE={session_mode} needs REDIS_URL or REDIS_HOST")
    origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
    return {
        "log_file": (env.get("AISERVE_LOG_FILE") or env.get("LOG_FILE") or "").strip(),
        "syslog_enabled": _bool(env, "SYSLOG_ENABLED", False),
        "syslog_network": _choice(env, "SYSLOG_NETWORK", "udp", {"udp", "tcp", "unix", "unixgram"}),
        "syslog_address": env.get("SYSLOG_ADDRESS", "").strip()
        or ("/dev/log" if env.get("SYSLOG_NETWORK", "").strip() == "unix" else "localhost:514"),
        "syslog_facility": _choice(
            env,
            "SYSLOG_FACILITY",
            "local0",
            {"user", "daemon", "auth", *(f"local{i}" for i in range(8))},
        ),
        "host": env.get("HOST", "").strip() or "0.0.0.0",  # noqa: S104
        "port": _int(env, "PORT", 8080, 1, 65535),
        "public_url": _public_url(env),
        "access_log": _bool(env, "ACCESS_LOG", False),
        "jwt_secret": secret,
        "jwt_expiration_seconds": _duration(env, "JWT_EXPIRATION", 24 * 3600),
        "session_mode": session_mode,
        "redis_url": redis_url,
        "rate_limit_per_minute": _int(env, "RATE_LIMIT_PER_MINUTE", 100, 1, 1_000_000),
        "auth_failures_per_key": _int(env, "AUTH_FAILURES_PER_KEY", 10, 1, 1_000_000),
        "auth_failures_per_address": _int(env, "AUTH_FAILURES_PER_ADDRESS", 50, 1, 1_000_000),
        "auth_failure_window_seconds": _int(env, "AUTH_FAILURE_WINDOW_SECONDS", 300, 1, 86_400),
        "auth_max_concurrent_hashes": _int(env, "AUTH_MAX_CONCURRENT_HASHES", 2, 1, 256),
        "cors_origins": origins,
        "max_body_bytes": _int(env, "MAX_BODY_BYTES", 1_048_576, 1024, 1_073_741_824),
        "http_header_timeout": _float(env, "HTTP_HEADER_TIMEOUT_SECONDS", 10.0, 0.1, 3600.0),
        "http_keepalive_seconds": _int(env, "HTTP_KEEPALIVE_SECONDS", 5, 1, 3600),
        "http_max_connections": _int(env, "HTTP_MAX_CONNECTIONS", 500, 1, 1_000_000),
        "forwarded_allow_ips": _forwarded_allow_ips(env),
    }


def _forwarded_allow_ips(env: Mapping[str, str]) -> tuple[str, ...]:
    """``FORWARDED_ALLOW_IPS``: a comma list of IP addresses or CIDR networks (none: empty)."""
    entries = [e.strip() for e in env.get("FORWARDED_ALLOW_IPS", "").split(",") if e.strip()]
    networks = []
    for entry in entries:
        try:
            networks.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            raise ConfigError(
                f"FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or CIDR network"
            ) from None
    return tuple(networks)


def _workers(env: Mapping[str, str], db_type: str) -> int:
    workers = _int(env, "WORKERS", 1, 1, 1024)
    if workers != 1 and db_type == "sqlite":
        raise ConfigError(
            f"WORKERS={workers} needs DB_TYPE=postgres: SQLite is served by one process"
        )
    return workers


def _marketplace(env: Mapping[str, str]) -> dict[str, Any]:
    markup_raw = env.get("PRICE_MARKUP", "").strip() or "0"
    try:
        markup_ppm = usd_to_micros(markup_raw, field="PRICE_MARKUP")
    except Exception as exc:
        raise ConfigError(f"PRICE_MARKUP={markup_raw!r}: {exc}") from None
    if not 0 <= markup_ppm <= 10_000_000:
        raise ConfigError(f"PRICE_MARKUP={markup_raw!r} must be between 0 and 10 (a fraction)")
    vast_key = env.get("VASTAI_API_KEY", "").strip()
    ionet_key = env.get("IONET_API_KEY", "").strip()
    urls = {}
    for name, default in (
        ("VASTAI_API_URL", "https://console.vast.ai"),
        ("IONET_API_URL", "https://api.io.solutions"),
    ):
        url = env.get(name, "").strip().rstrip("/") or default
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{name}={url!r} must be an http(s) URL")
        urls[name] = url
    return {
        "price_markup_ppm": markup_ppm,
        "metering_interval": _float(env, "METERING_INTERVAL_SECONDS", 60.0, 0.05, 3600.0),
        "instance_poll_interval": _float(env, "INSTANCE_POLL_SECONDS", 5.0, 0.05, 600.0),
        "reservation_timeout": _float(env, "RESERVATION_TIMEOUT_SECONDS", 300.0, 1.0, 3600.0),
        "reconcile_interval": _float(env, "RECONCILE_INTERVAL_SECONDS", 300.0, 1.0, 86400.0),
        "lb_strategy": _choice(
            env,
            "LB_STRATEGY",
            "round_robin",
            {
                "round_robin",
                "equal_weighted",
                "weighted_round_robin",
                "least_connections",
                "least_response_time",
            },
        ),
        "guardrails_action": _choice(env, "GUARDRAILS_ACTION", "stop", {"stop", "block"}),
        "sandbox_enabled": _bool(env, "SANDBOX_PROVIDER_ENABLED", not (vast_key or ionet_key)),
        "sandbox_provisioning_delay": _float(env, "SANDBOX_PROVISIONING_DELAY", 2.0, 0.0, 600.0),
        "vastai_api_key": vast_key,
        "vastai_api_url": urls["VASTAI_API_URL"],
        "ionet_api_key": ionet_key,
        "ionet_api_url": urls["IONET_API_URL"],
    }


def _usd(env: Mapping[str, str], name: str, default: str, low: int, high: int) -> int:
    raw = env.get(name, "").strip() or default
    try:
        value = usd_to_micros(raw, field=name)
    except Exception as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} must be between {low / 1e6:g} and {high / 1e6:g} USD")
    return value


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    url = env.get(name, "").strip().rstrip("/") or default
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={url!r} must be an http(s) URL")
    return url


def _proxy(env: Mapping[str, str]) -> dict[str, Any]:
    price = _usd(env, "PROXY_REQUEST_PRICE", "0", 0, 1_000_000_000)
    lease = _usd(env, "PROXY_LEASE_AMOUNT", "1", 1, 1_000_000_000_000)
    if price and lease < price:
        raise ConfigError("PROXY_LEASE_AMOUNT must be at least PROXY_REQUEST_PRICE")
    return {
        "allow_private_targets": _bool(env, "ALLOW_PRIVATE_TARGETS", False),
        "proxy_request_price": price,
        "proxy_lease_amount": lease,
        "proxy_usage_flush_interval": _float(env, "PROXY_USAGE_FLUSH_SECONDS", 10.0, 0.05, 3600.0),
        "usage_session_idle_minutes": _int(env, "USAGE_SESSION_IDLE_MINUTES", 30, 1, 10080),
        "proxy_connect_timeout": _float(env, "PROXY_CONNECT_TIMEOUT", 5.0, 0.1, 120.0),
        "proxy_default_timeout": _float(env, "GPU_API_TIMEOUT", 300.0, 0.1, 86400.0),
    }


def _payments(env: Mapping[str, str]) -> dict[str, Any]:
    low = _usd(env, "PAYMENT_MIN", "1", 10_000, 1_000_000_000_000)
    high = _usd(env, "PAYMENT_MAX", "10000", 10_000, 1_000_000_000_000)
    if high < low:
        raise ConfigError("PAYMENT_MAX must not be below PAYMENT_MIN")
    if low % 10_000 or high % 10_000:
        raise ConfigError("PAYMENT_MIN and PAYMENT_MAX must be whole cents")
    stripe_key = env.get("STRIPE_SECRET_KEY", "").strip()
    if stripe_key and not stripe_key.startswith(("sk_", "rk_")):
        raise ConfigError("STRIPE_SECRET_KEY must be a Stripe secret key (sk_… or rk_…)")
    rpc = _url(env, "CRYPTO_RPC_URL", "")
    address = env.get("CRYPTO_RECEIVING_ADDRESS", "").strip().lower()
    token = env.get("CRYPTO_TOKEN_ADDRESS", "").strip().lower()
    for name, value in (("CRYPTO_RECEIVING_ADDRESS", address), ("CRYPTO_TOKEN_ADDRESS", token)):
        if value and not re.fullmatch(r"0x[0-9a-f]{40}", value):
            raise ConfigError(f"{name}={value!r} must be a 0x-prefixed 20-byte hex address")
    enabled = _bool(env, "CRYPTO_ENABLED", bool(rpc and address))
    if enabled and not (rpc and address):
        raise ConfigError("CRYPTO_ENABLED=true needs CRYPTO_RPC_URL and CRYPTO_RECEIVING_ADDRESS")
    return {
        "payment_min": low,
        "payment_max": high,
        "stripe_secret_key": stripe_key,
        "stripe_webhook_secret": env.get("STRIPE_WEBHOOK_SECRET", "").strip(),
        "stripe_api_base": _url(env, "STRIPE_API_BASE", "https://api.stripe.com"),
        "crypto_enabled": enabled,
        "crypto_rpc_url": rpc,
        "crypto_network": _choice(
            env,
            "CRYPTO_NETWORK",
            "ethereum",
            {"ethereum", "base", "polygon", "arbitrum", "optimism"},
        ),
        "crypto_receiving_address": address,
        "crypto_token_address": token,
        "crypto_confirmations": _int(env, "CRYPTO_CONFIRMATIONS", 12, 1, 10_000),
        "crypto_payment_ttl": _float(env, "CRYPTO_PAYMENT_TTL_SECONDS", 3600.0, 10.0, 30 * 86400.0),
        "crypto_max_open_requests": _int(env, "CRYPTO_MAX_OPEN_REQUESTS", 5, 1, 1000),
        "crypto_poll_interval": _float(env, "CRYPTO_POLL_SECONDS", 15.0, 0.05, 3600.0),
        "afterdark_api_url": _url(env, "AFTERDARK_API_URL", "https://billing.afterdarksys.com"),
        "afterdark_api_key": env.get("AFTERDARK_API_KEY", "").strip(),
        "payment_reconcile_interval": _float(env, "PAYMENT_RECONCILE_SECONDS", 60.0, 0.05, 86400.0),
    }


def _grpc(env: Mapping[str, str], http_port: int) -> dict[str, Any]:
    enabled = _bool(env, "GRPC_ENABLED", True)
    port = _int(env, "GRPC_PORT", 9090, 1, 65535)
    if enabled and port == http_port:
        raise ConfigError(f"GRPC_PORT={port} must differ from PORT (the HTTP port)")
    files = {}
    for name in ("GRPC_TLS_CERT", "GRPC_TLS_KEY"):
        path = env.get(name, "").strip()
        if path and not (Path(path).is_file() and os.access(path, os.R_OK)):
            raise ConfigError(f"{name}={path!r} is not a readable file")
        files[name] = path
    if bool(files["GRPC_TLS_CERT"]) != bool(files["GRPC_TLS_KEY"]):
        raise ConfigError("GRPC_TLS_CERT and GRPC_TLS_KEY must be set together")
    return {
        "grpc_enabled": enabled,
        "grpc_port": port,
        "grpc_tls_cert": files["GRPC_TLS_CERT"],
        "grpc_tls_key": files["GRPC_TLS_KEY"],
    }


def _duration(env: Mapping[str, str], name: str, default: int) -> int:
    """Seconds from '3600', '90s', '15m', '24h' or '7d'."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (raw[:-1], units[raw[-1]]) if raw[-1] in units else (raw, 1)
    try:
        seconds = int(number) * unit
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a duration (e.g. 3600, 15m, 24h)") from None
    if not 60 <= seconds <= 90 * 86400:
        raise ConfigError(f"{name}={raw!r} must be between 1 minute and 90 days")
    return seconds


def _models(env: Mapping[str, str]) -> dict[str, Any]:
    backend = _choice(env, "STORAGE_BACKEND", "local", {"local", "oci"})
    bucket = env.get("OCI_STORAGE_BUCKET", "").strip()
    if backend == "oci" and not bucket:
        raise ConfigError("STORAGE_BACKEND=oci needs OCI_STORAGE_BUCKET")
    user = env.get("OCI_USER", "").strip()
    oci_env = {
        name: env.get(name, "").strip()
        for name in ("OCI_TENANCY", "OCI_FINGERPRINT", "OCI_KEY_FILE", "OCI_REGION")
    }
    if backend == "oci" and user and not all(oci_env.values()):
        raise ConfigError(
            "OCI_USER needs OCI_TENANCY, OCI_FINGERPRINT, OCI_KEY_FILE and OCI_REGION too"
        )
    price = _usd(env, "MODEL_PREDICT_PRICE", "0", 0, 1_000_000_000)
    lease = _usd(env, "MODEL_LEASE_AMOUNT", "1", 1, 1_000_000_000_000)
    if price and lease < price:
        raise ConfigError("MODEL_LEASE_AMOUNT must be at least MODEL_PREDICT_PRICE")
    total = _int(env, "STORAGE_QUOTA_BYTES", 100 * 10**9, 1, 10**15)
    return {
        "allow_pickle_models": _bool(env, "ALLOW_PICKLE_MODELS", False),
        "storage_backend": backend,
        "oci_storage_namespace": env.get("OCI_STORAGE_NAMESPACE", "").strip(),
        "oci_storage_bucket": bucket,
        "oci_storage_endpoint": _url(env, "OCI_STORAGE_ENDPOINT", ""),
        "oci_config_file": env.get("OCI_CONFIG_FILE", "").strip(),
        "oci_config_profile": env.get("OCI_CONFIG_PROFILE", "").strip() or "DEFAULT",
        "oci_user": user,
        "oci_tenancy": oci_env["OCI_TENANCY"],
        "oci_fingerprint": oci_env["OCI_FINGERPRINT"],
        "oci_key_file": oci_env["OCI_KEY_FILE"],
        "oci_region": oci_env["OCI_REGION"],
        "oci_part_size": _int(env, "OCI_PART_SIZE", 128 * 1_048_576, 1_048_576, 50 * 1024**3),
        "oci_max_attempts": _int(env, "OCI_MAX_ATTEMPTS", 4, 1, 20),
        "storage_quota_bytes": total,
        "max_upload_bytes": _int(env, "MAX_UPLOAD_BYTES", min(10 * 10**9, total), 1, total),
        "uploads_per_hour": _int(env, "UPLOADS_PER_HOUR", 50, 1, 1_000_000),
        "uploads_per_day": _int(env, "UPLOADS_PER_DAY", 500, 1, 10_000_000),
        "model_predict_price": price,
        "model_lease_amount": lease,
        "model_cache_bytes": _int(env, "MODEL_CACHE_BYTES", 2 * 1_073_741_824, 1_048_576, 10**13),
        "model_max_request_bytes": _int(
            env, "MODEL_MAX_REQUEST_BYTES", 16 * 1_048_576, 1024, 1_073_741_824
        ),
        "model_inference_threads": _int(env, "MODEL_INFERENCE_THREADS", 0, 0, 256),
        "model_intra_op_threads": _int(env, "MODEL_INTRA_OP_THREADS", 1, 0, 256),
        "model_execution_provider": _choice(
            env, "MODEL_EXECUTION_PROVIDER", "auto", {"auto", "cpu"}
        ),
        "model_cuda_tf32": _bool(env, "MODEL_CUDA_TF32", False),
        "model_batching": _bool(env, "MODEL_BATCHING", False),
        "model_batch_max_rows": _int(env, "MODEL_BATCH_MAX_ROWS", 64, 1, 65536),
        "model_batch_wait_ms": _float(env, "MODEL_BATCH_WAIT_MS", 0.0, 0.0, 1000.0),
        "model_convert_timeout": _float(env, "MODEL_CONVERT_TIMEOUT", 300.0, 1.0, 86400.0),
        "model_usage_flush_interval": _float(env, "MODEL_USAGE_FLUSH_SECONDS", 10.0, 0.05, 3600.0),
    }
