"""Typed settings from the environment and an optional ``.env`` file (the seed's names).

``Settings`` holds one frozen group per concern (``settings.db.host``, ``settings.http.port``…);
each group reads its own variables in ``from_env`` and takes every default from its own field
(written once: the loaders below hold no default values). An invalid value stops start-up with a
``ConfigError`` that names the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, urlsplit

from dotenv import dotenv_values

from domain.guardrails import WINDOW_NAMES, GuardrailPolicy, env_name
from domain.money import usd_to_micros

MIN_JWT_SECRET_BYTES = 32
TRUE = {"1", "true", "yes", "on", "y", "t"}
FALSE = {"0", "false", "no", "off", "n", "f"}

Env = Mapping[str, str]


class ConfigError(ValueError):
    """A configuration variable has an invalid value."""


@dataclass(frozen=True)
class DatabaseSettings:
    """The event store and read models (``DB_*``) and the local state folder (``DATA_DIR``)."""

    POSTGRES_NAME: ClassVar[str] = "gpuproxy"  # DB_NAME's default on PostgreSQL

    type: str = "sqlite"
    name: str = "gpuproxy.db"
    host: str = "localhost"
    port: int = 5432
    user: str = "postgres"
    password: str = field(default="", repr=False)
    max_conns: int = 20
    pooler: str = "none"  # "pgbouncer": DB_HOST/DB_PORT is a transaction pooler
    direct_host: str = ""  # session work (LISTEN, advisory locks); empty: DB_HOST
    direct_port: int = 0  # 0: DB_PORT
    data_dir: Path = Path("./data")

    @classmethod
    def from_env(cls, env: Env) -> DatabaseSettings:
        d = cls()
        kind = _str(env, "DB_TYPE", d.type).lower()
        if kind not in {"sqlite", "postgres"}:
            raise ConfigError(f"DB_TYPE={kind!r} is not supported (use sqlite or postgres)")
        return cls(
            type=kind,
            name=_str(env, "DB_NAME", d.name if kind == "sqlite" else cls.POSTGRES_NAME),
            host=_str(env, "DB_HOST", d.host),
            port=_int(env, "DB_PORT", d.port, 1, 65535),
            user=_str(env, "DB_USER", d.user),
            password=env.get("DB_PASSWORD", d.password),
            max_conns=_int(env, "DB_MAX_CONNS", d.max_conns, 2, 1000),
            pooler=_choice(env, "DB_POOLER", d.pooler, {"none", "pgbouncer"}),
            direct_host=_str(env, "DB_DIRECT_HOST", d.direct_host),
            direct_port=_int(env, "DB_DIRECT_PORT", d.direct_port, 0, 65535),
            data_dir=Path(_str(env, "DATA_DIR", str(d.data_dir))),
        )

    @property
    def sqlite_path(self) -> Path:
        path = Path(self.name)
        return path if path.is_absolute() else self.data_dir / path

    @property
    def postgres_conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            dbname=self.name,
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
        )

    @property
    def transaction_pooler(self) -> bool:
        """True when DB_HOST/DB_PORT is PgBouncer in transaction mode (no session state)."""
        return self.type == "postgres" and self.pooler == "pgbouncer"

    @property
    def direct_conninfo(self) -> str:
        """PostgreSQL itself, for session-scoped work (LISTEN, session advisory locks)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            self.postgres_conninfo,
            host=self.direct_host or self.host,
            port=self.direct_port or self.port,
        )


@dataclass(frozen=True)
class LedgerSettings:
    """Spending limits and the ledger's background timing."""

    guardrails: GuardrailPolicy = field(default_factory=GuardrailPolicy)
    projection_poll_interval: float = 1.0
    hold_sweep_interval: float = 30.0  # seconds between sweeps expiring due holds
    clock_max_ahead_seconds: float = 5.0  # business time: at most this ahead of the DB clock

    @classmethod
    def from_env(cls, env: Env) -> LedgerSettings:
        d = cls()
        return cls(
            guardrails=_guardrails(env, d.guardrails),
            projection_poll_interval=_float(
                env, "PROJECTION_POLL_INTERVAL", d.projection_poll_interval, 0.01, 60.0
            ),
            hold_sweep_interval=_float(
                env, "HOLD_SWEEP_SECONDS", d.hold_sweep_interval, 0.05, 3600.0
            ),
            clock_max_ahead_seconds=_float(
                env, "CLOCK_MAX_AHEAD_SECONDS", d.clock_max_ahead_seconds, 0.0, 3600.0
            ),
        )


@dataclass(frozen=True)
class LogSettings:
    """Log level, file, syslog and the access log."""

    UNIX_SYSLOG_ADDRESS: ClassVar[str] = "/dev/log"  # SYSLOG_ADDRESS's default for unix

    level: str = "INFO"
    file: str = ""
    syslog_enabled: bool = False
    syslog_network: str = "udp"
    syslog_address: str = "localhost:514"
    syslog_facility: str = "local0"
    access_log: bool = False

    @classmethod
    def from_env(cls, env: Env) -> LogSettings:
        d = cls()
        level = _str(env, "LOG_LEVEL", d.level).upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ConfigError(f"LOG_LEVEL={level!r} is not a log level")
        unix = _str(env, "SYSLOG_NETWORK", "") == "unix"
        return cls(
            level=level,
            file=_str(env, "AISERVE_LOG_FILE", "") or _str(env, "LOG_FILE", d.file),
            syslog_enabled=_bool(env, "SYSLOG_ENABLED", d.syslog_enabled),
            syslog_network=_choice(
                env, "SYSLOG_NETWORK", d.syslog_network, {"udp", "tcp", "unix", "unixgram"}
            ),
            syslog_address=_str(
                env, "SYSLOG_ADDRESS", cls.UNIX_SYSLOG_ADDRESS if unix else d.syslog_address
            ),
            syslog_facility=_choice(
                env,
                "SYSLOG_FACILITY",
                d.syslog_facility,
                {"user", "daemon", "auth", *(f"local{i}" for i in range(8))},
            ),
            access_log=_bool(env, "ACCESS_LOG", d.access_log),
        )


@dataclass(frozen=True)
class HttpSettings:
    """The HTTP listener, its limits and the server processes."""

    host: str = "0.0.0.0"  # noqa: S104 - a server binds all interfaces unless told otherwise
    port: int = 8080
    public_url: str = ""  # the origin clients reach us at (agent card, discovery); see base_url
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_048_576
    header_timeout: float = 10.0  # seconds to receive a request's headers
    keepalive_seconds: int = 5
    max_connections: int = 500
    forwarded_allow_ips: tuple[str, ...] = ()  # proxies whose X-Forwarded-For is believed
    workers: int = 1  # server processes on one port (PostgreSQL only above 1)

    @classmethod
    def from_env(cls, env: Env) -> HttpSettings:
        d = cls()
        return cls(
            host=_str(env, "HOST", d.host),
            port=_int(env, "PORT", d.port, 1, 65535),
            public_url=_public_url(env, d.public_url),
            cors_origins=_list(env, "CORS_ORIGINS") or d.cors_origins,
            max_body_bytes=_int(env, "MAX_BODY_BYTES", d.max_body_bytes, 1024, 1_073_741_824),
            header_timeout=_float(
                env, "HTTP_HEADER_TIMEOUT_SECONDS", d.header_timeout, 0.1, 3600.0
            ),
            keepalive_seconds=_int(env, "HTTP_KEEPALIVE_SECONDS", d.keepalive_seconds, 1, 3600),
            max_connections=_int(env, "HTTP_MAX_CONNECTIONS", d.max_connections, 1, 1_000_000),
            forwarded_allow_ips=_forwarded_allow_ips(env) or d.forwarded_allow_ips,
            workers=_int(env, "WORKERS", d.workers, 1, 1024),
        )

    @property
    def base_url(self) -> str:
        """Public origin for URLs we advertise: ``PUBLIC_URL``, else the listening address
        (never a request's ``Host``)."""
        if self.public_url:
            return self.public_url
        host = self.host if self.host not in {"0.0.0.0", "::", ""} else "127.0.0.1"  # noqa: S104
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"


@dataclass(frozen=True)
class RedisSettings:
    """The shared Redis (sessions, rate limits, signals): ``REDIS_URL`` or its parts."""

    PORT: ClassVar[int] = 6379  # REDIS_PORT's default when REDIS_HOST is given
    DB: ClassVar[int] = 0  # REDIS_DB's default

    url: str = field(default="", repr=False)  # may carry the password

    @classmethod
    def from_env(cls, env: Env) -> RedisSettings:
        d = cls()
        url = _str(env, "REDIS_URL", d.url)
        if url:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(
                    f"REDIS_URL={url!r} must start with redis://, rediss:// or unix://"
                )
            return cls(url=url)
        host = _str(env, "REDIS_HOST", "")
        if not host:
            return d
        port = _int(env, "REDIS_PORT", cls.PORT, 1, 65535)
        password = env.get("REDIS_PASSWORD", "")
        db = _int(env, "REDIS_DB", cls.DB, 0, 1024)
        auth = f":{quote(password, safe='')}@" if password else ""
        return cls(url=f"redis://{auth}{host}:{port}/{db}")


@dataclass(frozen=True)
class AuthSettings:
    """Tokens, sessions and the request and failed-login limits."""

    jwt_secret: str = field(default="", repr=False)
    jwt_expiration_seconds: int = 24 * 3600
    session_mode: str = "sql"
    rate_limit_per_minute: int = 100
    failures_per_key: int = 10  # failed API-key attempts per key id per window
    failures_per_address: int = 50  # ... per client address per window
    failure_window_seconds: int = 300
    max_concurrent_hashes: int = 2  # argon2 API-key checks at once per process

    @classmethod
    def from_env(cls, env: Env) -> AuthSettings:
        d = cls()
        secret = env.get("JWT_SECRET", d.jwt_secret)
        if secret and len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise ConfigError(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes long")
        return cls(
            jwt_secret=secret,
            jwt_expiration_seconds=_duration(env, "JWT_EXPIRATION", d.jwt_expiration_seconds),
            session_mode=_choice(env, "SESSION_MODE", d.session_mode, {"sql", "redis", "balanced"}),
            rate_limit_per_minute=_int(
                env, "RATE_LIMIT_PER_MINUTE", d.rate_limit_per_minute, 1, 1_000_000
            ),
            failures_per_key=_int(env, "AUTH_FAILURES_PER_KEY", d.failures_per_key, 1, 1_000_000),
            failures_per_address=_int(
                env, "AUTH_FAILURES_PER_ADDRESS", d.failures_per_address, 1, 1_000_000
            ),
            failure_window_seconds=_int(
                env, "AUTH_FAILURE_WINDOW_SECONDS", d.failure_window_seconds, 1, 86_400
            ),
            max_concurrent_hashes=_int(
                env, "AUTH_MAX_CONCURRENT_HASHES", d.max_concurrent_hashes, 1, 256
            ),
        )


@dataclass(frozen=True)
class MarketplaceSettings:
    """Renting GPUs: prices, the background jobs and the load balancer."""

    price_markup_ppm: int = 0
    metering_interval: float = 60.0
    instance_poll_interval: float = 5.0
    reservation_timeout: float = 300.0
    reconcile_interval: float = 300.0
    lb_strategy: str = "round_robin"
    guardrails_action: str = "stop"

    @classmethod
    def from_env(cls, env: Env) -> MarketplaceSettings:
        d = cls()
        return cls(
            price_markup_ppm=_markup(env, d.price_markup_ppm),
            metering_interval=_float(
                env, "METERING_INTERVAL_SECONDS", d.metering_interval, 0.05, 3600.0
            ),
            instance_poll_interval=_float(
                env, "INSTANCE_POLL_SECONDS", d.instance_poll_interval, 0.05, 600.0
            ),
            reservation_timeout=_float(
                env, "RESERVATION_TIMEOUT_SECONDS", d.reservation_timeout, 1.0, 3600.0
            ),
            reconcile_interval=_float(
                env, "RECONCILE_INTERVAL_SECONDS", d.reconcile_interval, 1.0, 86400.0
            ),
            lb_strategy=_choice(
                env,
                "LB_STRATEGY",
                d.lb_strategy,
                {
                    "round_robin",
                    "equal_weighted",
                    "weighted_round_robin",
                    "least_connections",
                    "least_response_time",
                },
            ),
            guardrails_action=_choice(
                env, "GUARDRAILS_ACTION", d.guardrails_action, {"stop", "block"}
            ),
        )


@dataclass(frozen=True)
class ProviderSettings:
    """The GPU markets: the built-in sandbox, vast.ai and io.net."""

    sandbox_enabled: bool = True  # the default without vast.ai or io.net keys
    sandbox_provisioning_delay: float = 2.0
    sandbox_bind_host: str = "127.0.0.1"  # where sandbox instances listen
    sandbox_advertise_host: str = "127.0.0.1"  # how other replicas reach them (see from_env)
    sandbox_heartbeat_timeout: float = 15.0  # an owner silent this long: its instances are gone
    vastai_api_key: str = field(default="", repr=False)
    vastai_api_url: str = "https://console.vast.ai"
    ionet_api_key: str = field(default="", repr=False)
    ionet_api_url: str = "https://api.io.solutions"

    @classmethod
    def from_env(cls, env: Env) -> ProviderSettings:
        d = cls()
        vast_key = _str(env, "VASTAI_API_KEY", d.vastai_api_key)
        ionet_key = _str(env, "IONET_API_KEY", d.ionet_api_key)
        bind, advertise = _sandbox_hosts(env, d.sandbox_bind_host)
        return cls(
            sandbox_enabled=_bool(
                env, "SANDBOX_PROVIDER_ENABLED", d.sandbox_enabled and not (vast_key or ionet_key)
            ),
            sandbox_provisioning_delay=_float(
                env, "SANDBOX_PROVISIONING_DELAY", d.sandbox_provisioning_delay, 0.0, 600.0
            ),
            sandbox_bind_host=bind,
            sandbox_advertise_host=advertise,
            sandbox_heartbeat_timeout=_float(
                env,
                "SANDBOX_HEARTBEAT_TIMEOUT_SECONDS",
                d.sandbox_heartbeat_timeout,
                0.5,
                600.0,
            ),
            vastai_api_key=vast_key,
            vastai_api_url=_url(env, "VASTAI_API_URL", d.vastai_api_url),
            ionet_api_key=ionet_key,
            ionet_api_url=_url(env, "IONET_API_URL", d.ionet_api_url),
        )


@dataclass(frozen=True)
class ProxySettings:
    """The request proxy to rented instances: fees, leases and time limits."""

    allow_private_targets: bool = False
    request_price: int = 0  # micro-USD per proxied request
    lease_amount: int = 1_000_000  # micro-USD each serving process holds per user
    usage_flush_interval: float = 10.0
    usage_session_idle_minutes: int = 30  # a usage session ends after this long without requests
    connect_timeout: float = 5.0
    default_timeout: float = 300.0

    @classmethod
    def from_env(cls, env: Env) -> ProxySettings:
        d = cls()
        price = _usd(env, "PROXY_REQUEST_PRICE", d.request_price, 0, 1_000_000_000)
        lease = _usd(env, "PROXY_LEASE_AMOUNT", d.lease_amount, 1, 1_000_000_000_000)
        if price and lease < price:
            raise ConfigError("PROXY_LEASE_AMOUNT must be at least PROXY_REQUEST_PRICE")
        return cls(
            allow_private_targets=_bool(env, "ALLOW_PRIVATE_TARGETS", d.allow_private_targets),
            request_price=price,
            lease_amount=lease,
            usage_flush_interval=_float(
                env, "PROXY_USAGE_FLUSH_SECONDS", d.usage_flush_interval, 0.05, 3600.0
            ),
            usage_session_idle_minutes=_int(
                env, "USAGE_SESSION_IDLE_MINUTES", d.usage_session_idle_minutes, 1, 10080
            ),
            connect_timeout=_float(env, "PROXY_CONNECT_TIMEOUT", d.connect_timeout, 0.1, 120.0),
            default_timeout=_float(env, "GPU_API_TIMEOUT", d.default_timeout, 0.1, 86400.0),
        )


@dataclass(frozen=True)
class PaymentSettings:
    """Buying credits: amounts, Stripe, USDC and AfterDark."""

    minimum: int = 1_000_000  # micro-USD per payment
    maximum: int = 10_000_000_000
    stripe_secret_key: str = field(default="", repr=False)
    stripe_webhook_secret: str = field(default="", repr=False)
    stripe_api_base: str = "https://api.stripe.com"
    crypto_enabled: bool = False  # the default without CRYPTO_RPC_URL and an address
    crypto_rpc_url: str = field(default="", repr=False)  # may carry the provider's key
    crypto_network: str = "ethereum"
    crypto_receiving_address: str = ""
    crypto_token_address: str = ""  # USDC contract; empty: the network's official one
    crypto_confirmations: int = 12
    crypto_payment_ttl: float = 3600.0
    crypto_max_open_requests: int = 5  # per user
    crypto_poll_interval: float = 15.0
    afterdark_api_url: str = "https://billing.afterdarksys.com"
    afterdark_api_key: str = field(default="", repr=False)
    reconcile_interval: float = 60.0

    @classmethod
    def from_env(cls, env: Env) -> PaymentSettings:
        d = cls()
        low = _usd(env, "PAYMENT_MIN", d.minimum, 10_000, 1_000_000_000_000)
        high = _usd(env, "PAYMENT_MAX", d.maximum, 10_000, 1_000_000_000_000)
        if high < low:
            raise ConfigError("PAYMENT_MAX must not be below PAYMENT_MIN")
        if low % 10_000 or high % 10_000:
            raise ConfigError("PAYMENT_MIN and PAYMENT_MAX must be whole cents")
        stripe_key = _str(env, "STRIPE_SECRET_KEY", d.stripe_secret_key)
        if stripe_key and not stripe_key.startswith(("sk_", "rk_")):
            raise ConfigError("STRIPE_SECRET_KEY must be a Stripe secret key (sk_… or rk_…)")
        rpc = _url(env, "CRYPTO_RPC_URL", d.crypto_rpc_url)
        address = _str(env, "CRYPTO_RECEIVING_ADDRESS", d.crypto_receiving_address).lower()
        token = _str(env, "CRYPTO_TOKEN_ADDRESS", d.crypto_token_address).lower()
        for name, value in (("CRYPTO_RECEIVING_ADDRESS", address), ("CRYPTO_TOKEN_ADDRESS", token)):
            if value and not re.fullmatch(r"0x[0-9a-f]{40}", value):
                raise ConfigError(f"{name}={value!r} must be a 0x-prefixed 20-byte hex address")
        enabled = _bool(env, "CRYPTO_ENABLED", d.crypto_enabled or bool(rpc and address))
        if enabled and not (rpc and address):
            raise ConfigError(
                "CRYPTO_ENABLED=true needs CRYPTO_RPC_URL and CRYPTO_RECEIVING_ADDRESS"
            )
        return cls(
            minimum=low,
            maximum=high,
            stripe_secret_key=stripe_key,
            stripe_webhook_secret=_str(env, "STRIPE_WEBHOOK_SECRET", d.stripe_webhook_secret),
            stripe_api_base=_url(env, "STRIPE_API_BASE", d.stripe_api_base),
            crypto_enabled=enabled,
            crypto_rpc_url=rpc,
            crypto_network=_choice(
                env,
                "CRYPTO_NETWORK",
                d.crypto_network,
                {"ethereum", "base", "polygon", "arbitrum", "optimism"},
            ),
            crypto_receiving_address=address,
            crypto_token_address=token,
            crypto_confirmations=_int(
                env, "CRYPTO_CONFIRMATIONS", d.crypto_confirmations, 1, 10_000
            ),
            crypto_payment_ttl=_float(
                env, "CRYPTO_PAYMENT_TTL_SECONDS", d.crypto_payment_ttl, 10.0, 30 * 86400.0
            ),
            crypto_max_open_requests=_int(
                env, "CRYPTO_MAX_OPEN_REQUESTS", d.crypto_max_open_requests, 1, 1000
            ),
            crypto_poll_interval=_float(
                env, "CRYPTO_POLL_SECONDS", d.crypto_poll_interval, 0.05, 3600.0
            ),
            afterdark_api_url=_url(env, "AFTERDARK_API_URL", d.afterdark_api_url),
            afterdark_api_key=_str(env, "AFTERDARK_API_KEY", d.afterdark_api_key),
            reconcile_interval=_float(
                env, "PAYMENT_RECONCILE_SECONDS", d.reconcile_interval, 0.05, 86400.0
            ),
        )


@dataclass(frozen=True)
class StreamSettings:
    """Live streams (WebSocket ``/ws``)."""

    poll_interval: float = 0.2  # seconds between reads of the event log by the feed
    queue_size: int = 256  # messages buffered per connection before it counts as slow
    ping_interval: float = 20.0
    ping_timeout: float = 60.0  # close a connection silent for this long
    max_replay: int = 100_000  # events a resume (``since``) may scan

    @classmethod
    def from_env(cls, env: Env) -> StreamSettings:
        d = cls()
        return cls(
            poll_interval=_float(env, "WS_POLL_INTERVAL", d.poll_interval, 0.01, 10.0),
            queue_size=_int(env, "WS_QUEUE_SIZE", d.queue_size, 4, 100_000),
            ping_interval=_float(env, "WS_PING_INTERVAL", d.ping_interval, 0.1, 3600.0),
            ping_timeout=_float(env, "WS_PING_TIMEOUT", d.ping_timeout, 0.2, 86400.0),
            max_replay=_int(env, "WS_MAX_REPLAY", d.max_replay, 1, 100_000_000),
        )


@dataclass(frozen=True)
class GrpcSettings:
    """The gRPC listener."""

    enabled: bool = True
    port: int = 9090
    tls_cert: str = ""
    tls_key: str = ""

    @classmethod
    def from_env(cls, env: Env) -> GrpcSettings:
        d = cls()
        enabled = _bool(env, "GRPC_ENABLED", d.enabled)
        port = _int(env, "GRPC_PORT", d.port, 1, 65535)
        cert = _readable_file(env, "GRPC_TLS_CERT", d.tls_cert)
        key = _readable_file(env, "GRPC_TLS_KEY", d.tls_key)
        if bool(cert) != bool(key):
            raise ConfigError("GRPC_TLS_CERT and GRPC_TLS_KEY must be set together")
        return cls(enabled=enabled, port=port, tls_cert=cert, tls_key=key)


@dataclass(frozen=True)
class ModelSettings:
    """Model serving: storage (local or OCI), quotas, prices and the inference runtime."""

    allow_pickle: bool = False
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
    max_upload_bytes: int = 10 * 10**9  # at most STORAGE_QUOTA_BYTES
    uploads_per_hour: int = 50
    uploads_per_day: int = 500
    predict_price: int = 0  # micro-USD per prediction
    lease_amount: int = 1_000_000
    cache_bytes: int = 2 * 1_073_741_824
    max_request_bytes: int = 16 * 1_048_576
    inference_threads: int = 0  # 0: one per CPU core, at most 8
    intra_op_threads: int = 1
    execution_provider: str = "auto"
    cuda_tf32: bool = False
    batching: bool = False
    batch_max_rows: int = 64
    batch_wait_ms: float = 0.0
    convert_timeout: float = 300.0
    usage_flush_interval: float = 10.0

    @classmethod
    def from_env(cls, env: Env) -> ModelSettings:
        d = cls()
        backend = _choice(env, "STORAGE_BACKEND", d.storage_backend, {"local", "oci"})
        bucket = _str(env, "OCI_STORAGE_BUCKET", d.oci_storage_bucket)
        if backend == "oci" and not bucket:
            raise ConfigError("STORAGE_BACKEND=oci needs OCI_STORAGE_BUCKET")
        user = _str(env, "OCI_USER", d.oci_user)
        tenancy = _str(env, "OCI_TENANCY", d.oci_tenancy)
        fingerprint = _str(env, "OCI_FINGERPRINT", d.oci_fingerprint)
        key_file = _str(env, "OCI_KEY_FILE", d.oci_key_file)
        region = _str(env, "OCI_REGION", d.oci_region)
        if backend == "oci" and user and not (tenancy and fingerprint and key_file and region):
            raise ConfigError(
                "OCI_USER needs OCI_TENANCY, OCI_FINGERPRINT, OCI_KEY_FILE and OCI_REGION too"
            )
        price = _usd(env, "MODEL_PREDICT_PRICE", d.predict_price, 0, 1_000_000_000)
        lease = _usd(env, "MODEL_LEASE_AMOUNT", d.lease_amount, 1, 1_000_000_000_000)
        if price and lease < price:
            raise ConfigError("MODEL_LEASE_AMOUNT must be at least MODEL_PREDICT_PRICE")
        total = _int(env, "STORAGE_QUOTA_BYTES", d.storage_quota_bytes, 1, 10**15)
        return cls(
            allow_pickle=_bool(env, "ALLOW_PICKLE_MODELS", d.allow_pickle),
            storage_backend=backend,
            oci_storage_namespace=_str(env, "OCI_STORAGE_NAMESPACE", d.oci_storage_namespace),
            oci_storage_bucket=bucket,
            oci_storage_endpoint=_url(env, "OCI_STORAGE_ENDPOINT", d.oci_storage_endpoint),
            oci_config_file=_str(env, "OCI_CONFIG_FILE", d.oci_config_file),
            oci_config_profile=_str(env, "OCI_CONFIG_PROFILE", d.oci_config_profile),
            oci_user=user,
            oci_tenancy=tenancy,
            oci_fingerprint=fingerprint,
            oci_key_file=key_file,
            oci_region=region,
            oci_part_size=_int(env, "OCI_PART_SIZE", d.oci_part_size, 1_048_576, 50 * 1024**3),
            oci_max_attempts=_int(env, "OCI_MAX_ATTEMPTS", d.oci_max_attempts, 1, 20),
            storage_quota_bytes=total,
            max_upload_bytes=_int(
                env, "MAX_UPLOAD_BYTES", min(d.max_upload_bytes, total), 1, total
            ),
            uploads_per_hour=_int(env, "UPLOADS_PER_HOUR", d.uploads_per_hour, 1, 1_000_000),
            uploads_per_day=_int(env, "UPLOADS_PER_DAY", d.uploads_per_day, 1, 10_000_000),
            predict_price=price,
            lease_amount=lease,
            cache_bytes=_int(env, "MODEL_CACHE_BYTES", d.cache_bytes, 1_048_576, 10**13),
            max_request_bytes=_int(
                env, "MODEL_MAX_REQUEST_BYTES", d.max_request_bytes, 1024, 1_073_741_824
            ),
            inference_threads=_int(env, "MODEL_INFERENCE_THREADS", d.inference_threads, 0, 256),
            intra_op_threads=_int(env, "MODEL_INTRA_OP_THREADS", d.intra_op_threads, 0, 256),
            execution_provider=_choice(
                env, "MODEL_EXECUTION_PROVIDER", d.execution_provider, {"auto", "cpu"}
            ),
            cuda_tf32=_bool(env, "MODEL_CUDA_TF32", d.cuda_tf32),
            batching=_bool(env, "MODEL_BATCHING", d.batching),
            batch_max_rows=_int(env, "MODEL_BATCH_MAX_ROWS", d.batch_max_rows, 1, 65536),
            batch_wait_ms=_float(env, "MODEL_BATCH_WAIT_MS", d.batch_wait_ms, 0.0, 1000.0),
            convert_timeout=_float(env, "MODEL_CONVERT_TIMEOUT", d.convert_timeout, 1.0, 86400.0),
            usage_flush_interval=_float(
                env, "MODEL_USAGE_FLUSH_SECONDS", d.usage_flush_interval, 0.05, 3600.0
            ),
        )


@dataclass(frozen=True)
class Settings:
    """Everything the composition root needs, already validated, one group per concern."""

    db: DatabaseSettings = field(default_factory=DatabaseSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    log: LogSettings = field(default_factory=LogSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    marketplace: MarketplaceSettings = field(default_factory=MarketplaceSettings)
    providers: ProviderSettings = field(default_factory=ProviderSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    payments: PaymentSettings = field(default_factory=PaymentSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    models: ModelSettings = field(default_factory=ModelSettings)

    @classmethod
    def from_env(cls, env: Env) -> Settings:
        """Every group from ``env``, then the rules that span groups."""
        settings = cls(
            db=DatabaseSettings.from_env(env),
            log=LogSettings.from_env(env),
            http=HttpSettings.from_env(env),
            redis=RedisSettings.from_env(env),
            auth=AuthSettings.from_env(env),
            marketplace=MarketplaceSettings.from_env(env),
            providers=ProviderSettings.from_env(env),
            ledger=LedgerSettings.from_env(env),
            proxy=ProxySettings.from_env(env),
            payments=PaymentSettings.from_env(env),
            models=ModelSettings.from_env(env),
            grpc=GrpcSettings.from_env(env),
            streams=StreamSettings.from_env(env),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """The rules that span groups (``ConfigError`` naming the variable)."""
        if self.auth.session_mode != "sql" and not self.redis.url:
            raise ConfigError(
                f"SESSION_MODE={self.auth.session_mode} needs REDIS_URL or REDIS_HOST"
            )
        if self.http.workers != 1 and self.db.type == "sqlite":
            raise ConfigError(
                f"WORKERS={self.http.workers} needs DB_TYPE=postgres: "
                "SQLite is served by one process"
            )
        if self.grpc.enabled and self.grpc.port == self.http.port:
            raise ConfigError(f"GRPC_PORT={self.grpc.port} must differ from PORT (the HTTP port)")


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
) -> Settings:
    """Read settings: the process environment wins over the ``.env`` file."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return Settings.from_env(merged)


# Readers of one value each. ``default`` always comes from a group's field (never a literal
# here), so a default is written once; an empty value (``NAME=`` in an env file) is unset.


def _str(env: Env, name: str, default: str) -> str:
    return env.get(name, "").strip() or default


def _list(env: Env, name: str) -> tuple[str, ...]:
    """A comma list; empty entries dropped."""
    return tuple(e.strip() for e in env.get(name, "").split(",") if e.strip())


def _bool(env: Env, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


def _int(env: Env, name: str, default: int, low: int, high: int) -> int:
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


def _float(env: Env, name: str, default: float, low: float, high: float) -> float:
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


def _choice(env: Env, name: str, default: str, allowed: set[str]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} must be one of {', '.join(sorted(allowed))}")
    return value


def _usd(env: Env, name: str, default: int, low: int, high: int) -> int:
    """A USD amount (``"0.25"``) as micro-USD; ``default`` is micro-USD already."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = usd_to_micros(raw, field=name)
    except Exception as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} must be between {low / 1e6:g} and {high / 1e6:g} USD")
    return value


def _markup(env: Env, default: int) -> int:
    """``PRICE_MARKUP``: a fraction (``"0.1"``) as parts per million."""
    raw = env.get("PRICE_MARKUP", "").strip()
    if not raw:
        return default
    try:
        ppm = usd_to_micros(raw, field="PRICE_MARKUP")
    except Exception as exc:
        raise ConfigError(f"PRICE_MARKUP={raw!r}: {exc}") from None
    if not 0 <= ppm <= 10_000_000:
        raise ConfigError(f"PRICE_MARKUP={raw!r} must be between 0 and 10 (a fraction)")
    return ppm


def _url(env: Env, name: str, default: str) -> str:
    url = env.get(name, "").strip().rstrip("/") or default
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={url!r} must be an http(s) URL")
    return url


def _public_url(env: Env, default: str) -> str:
    raw = env.get("PUBLIC_URL", "").strip()
    if not raw:
        return default
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"PUBLIC_URL={raw!r} must be an http(s) URL without query or fragment")
    return raw.rstrip("/")


def _forwarded_allow_ips(env: Env) -> tuple[str, ...]:
    """``FORWARDED_ALLOW_IPS``: a comma list of IP addresses or CIDR networks (none: empty)."""
    networks = []
    for entry in _list(env, "FORWARDED_ALLOW_IPS"):
        try:
            networks.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            raise ConfigError(
                f"FORWARDED_ALLOW_IPS: {entry!r} is not an IP address or CIDR network"
            ) from None
    return tuple(networks)


def _readable_file(env: Env, name: str, default: str) -> str:
    path = _str(env, name, default)
    if path and not (Path(path).is_file() and os.access(path, os.R_OK)):
        raise ConfigError(f"{name}={path!r} is not a readable file")
    return path


def _duration(env: Env, name: str, default: int) -> int:
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


def _guardrails(env: Env, default: GuardrailPolicy) -> GuardrailPolicy:
    limits = dict(default.limits)
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
    return GuardrailPolicy(enabled=_bool(env, "GUARDRAILS_ENABLED", default.enabled), limits=limits)


def _sandbox_hosts(env: Env, default_bind: str) -> tuple[str, str]:
    """SANDBOX_BIND_HOST and SANDBOX_ADVERTISE_HOST (default the bind host, or this machine's
    name when binding every address)."""
    bind = _str(env, "SANDBOX_BIND_HOST", default_bind)
    advertise = _str(env, "SANDBOX_ADVERTISE_HOST", "")
    for name, value in (("SANDBOX_BIND_HOST", bind), ("SANDBOX_ADVERTISE_HOST", advertise)):
        if value and not re.fullmatch(r"[A-Za-z0-9._:-]+", value):
            raise ConfigError(f"{name}={value!r} must be a host name or an IP address")
    if not advertise:
        advertise = socket.gethostname() if bind in ("0.0.0.0", "::") else bind  # noqa: S104
    if advertise in ("0.0.0.0", "::"):  # noqa: S104
        raise ConfigError(
            f"SANDBOX_ADVERTISE_HOST={advertise!r}: other replicas cannot reach an unspecified "
            "address; name this replica's host"
        )
    return bind, advertise
