"""The composition root: the one place that picks databases, adapters and fakes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from domain.clocks import system_clock
from domain.marketplace import GpuProvider
from domain.ports.clock import Clock
from domain.ports.payments import CardProcessor, ChainReader
from domain.services.ledger import LedgerApp, LedgerService
from domain.services.marketplace import MarketplaceConfig, MarketplaceService
from domain.services.models import ModelService
from domain.services.payments import CryptoConfig, PaymentService
from infrastructure.db.clock import business_clock
from infrastructure.db.listen import PgWakeup
from infrastructure.db.migrate import migrate as apply_migrations
from infrastructure.db.setup import open_ledger_app
from infrastructure.db.sql import Database, PostgresDatabase, SqliteDatabase
from infrastructure.eventstore.event_log import EventLog
from infrastructure.eventstore.factory import events_channel
from infrastructure.identity.api_keys import ApiKeyStore
from infrastructure.identity.auth import AuthService
from infrastructure.identity.auth_throttle import open_throttle
from infrastructure.identity.rate_limit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from infrastructure.identity.revocation import FileSignal, NoSignal, RedisSignal, RevocationSignal
from infrastructure.identity.sessions import (
    BalancedSessions,
    RedisSessions,
    SessionStore,
    SqlSessions,
)
from infrastructure.identity.store import UserStore
from infrastructure.identity.tokens import TokenCodec, load_or_create_secret
from infrastructure.jobs.election import (
    HOLD_SWEEP_LOCK_KEY,
    MARKETPLACE_JOBS_LOCK_KEY,
    PAYMENT_JOBS_LOCK_KEY,
    Election,
    PgElection,
    SoleProcess,
)
from infrastructure.jobs.hold_sweep import HoldSweep
from infrastructure.jobs.marketplace import MarketplaceJobs
from infrastructure.jobs.payments import CryptoWatch, PaymentJobs
from infrastructure.payments import SETUP_VARIABLES as PAYMENT_SETUP_VARIABLES
from infrastructure.proxy.instance_signal import InstanceSignal, instance_signal
from infrastructure.readmodels.queries.instances import InstanceQueries
from infrastructure.readmodels.queries.ledger import LedgerQueries
from infrastructure.readmodels.queries.payments import PaymentQueries
from infrastructure.readmodels.queries.users import UserQueries
from infrastructure.readmodels.runner import ProjectionRunner
from infrastructure.settings import Settings, load_settings
from projections.ledger import ALL

if TYPE_CHECKING:
    from litestar.di import Provide

    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.agents.routes import AgentDoors
    from interfaces.http.observability import Metrics
    from interfaces.ws.service import Streams

log = logging.getLogger(__name__)


@dataclass
class Container:
    """Everything a process needs, wired once."""

    settings: Settings
    db: Database
    app: LedgerApp
    ledger: LedgerService
    events: EventLog
    runner: ProjectionRunner
    users: UserStore
    queries: LedgerQueries
    auth: AuthService
    limiter: RateLimiter
    redis: Any | None
    marketplace: MarketplaceService
    payments: PaymentService
    payment_queries: PaymentQueries
    instance_queries: InstanceQueries
    user_queries: UserQueries
    stripe: Any | None = None  # StripeGateway when STRIPE_SECRET_KEY is set (webhooks)
    chain: ChainReader | None = None
    instances_signal: InstanceSignal | None = None  # "an owner's instances changed" (proxy)
    _closers: list[Any] = field(default_factory=list)
    _models: ModelService | None = None
    _elections: dict[int, Election] = field(default_factory=dict)

    def model_service(self) -> ModelService:
        """The process's one model service (storage, sessions, leases), built on first use."""
        if self._models is None:
            from infrastructure.models import build_model_service
            from infrastructure.proxy.fee_tally import RedisFeeTally

            tally = RedisFeeTally(self.redis) if self.redis is not None else None
            self._models = build_model_service(
                self.settings, self.db, self.ledger, self.ledger.clock, tally
            )
        return self._models

    def election(self, key: int) -> Election:
        """Leadership of one singleton job: a session advisory lock on a direct connection
        (never through PgBouncer) on PostgreSQL; on SQLite the one process always leads.
        One per key and process (closed with the container)."""
        if self.settings.db.type != "postgres":
            return SoleProcess()
        if key not in self._elections:
            election = PgElection(self.settings.db.direct_conninfo, key)
            self._elections[key] = election
            self._closers.append(election.close)
        return self._elections[key]

    def jobs(self) -> MarketplaceJobs:
        return MarketplaceJobs(
            self.marketplace,
            self.db,
            election=self.election(MARKETPLACE_JOBS_LOCK_KEY),
            poll_interval=self.settings.marketplace.instance_poll_interval,
            metering_interval=self.settings.marketplace.metering_interval,
            reconcile_interval=self.settings.marketplace.reconcile_interval,
        )

    def hold_sweep(self) -> HoldSweep:
        """The job expiring due holds; on PostgreSQL one elected process sweeps."""
        s = self.settings
        leases = None
        if self.redis is not None:  # the proxy's fee tally: recover dead processes' leases
            from infrastructure.proxy.fee_tally import RedisFeeTally
            from infrastructure.proxy.lease_recovery import LeaseRecovery

            leases = LeaseRecovery(self.ledger, RedisFeeTally(self.redis))
        return HoldSweep(
            self.ledger,
            self.db,
            self.election(HOLD_SWEEP_LOCK_KEY),
            interval=s.ledger.hold_sweep_interval,
            clock=self.ledger.clock,
            leases=leases,
        )

    def payment_jobs(self) -> PaymentJobs:
        s = self.settings
        watch = None
        if self.chain is not None and self.payments.crypto is not None:
            crypto = self.payments.crypto
            watch = CryptoWatch(
                reader=self.chain,
                network=crypto.network,
                token=crypto.token,
                receiving_address=crypto.receiving_address,
                confirmations=s.payments.crypto_confirmations,
            )
        return PaymentJobs(
            self.payments,
            self.payment_queries,
            self.db,
            self.election(PAYMENT_JOBS_LOCK_KEY),
            reconcile_interval=s.payments.reconcile_interval,
            crypto=watch,
            crypto_interval=s.payments.crypto_poll_interval,
        )

    async def aclose_providers(self) -> None:
        for provider in self.marketplace.providers.values():
            await provider.aclose()
        for processor in self.payments.processors.values():
            await processor.aclose()
        if self.chain is not None:
            await self.chain.aclose()

    def close(self) -> None:
        try:
            asyncio.run(self.aclose_providers())
        except RuntimeError:  # inside a running loop: the app's shutdown hook closed them
            log.debug("providers left to the running loop to close")
        self.runner.stop()
        self.ledger.close()
        for closer in reversed(self._closers):
            closer()
        self.db.close()
        if self.redis is not None:
            self.redis.close()
        close_app = getattr(self.app, "close", None)
        if close_app is not None:
            close_app()


def proxy_runtime(container: Container) -> ProxyRuntime:
    """The proxy of one serving process: credit leases, balancing, forwarding, usage."""
    from infrastructure.proxy.runtime import ProxyRuntime
    from infrastructure.proxy.targets import advertised_off_loopback

    settings = container.settings
    return ProxyRuntime(
        container.db,
        container.ledger,
        default_strategy=settings.marketplace.lb_strategy,
        price=settings.proxy.request_price,
        lease_amount=settings.proxy.lease_amount,
        allow_private=settings.proxy.allow_private_targets,
        sandbox_private=advertised_off_loopback(settings.providers.sandbox_advertise_host),
        connect_timeout=settings.proxy.connect_timeout,
        default_timeout=settings.proxy.default_timeout,
        flush_interval=settings.proxy.usage_flush_interval,
        clock=container.ledger.clock,
        signal=container.instances_signal,
        runner=container.runner,
        session_idle_minutes=settings.proxy.usage_session_idle_minutes,
    )


@dataclass
class ServingDoors:
    """What the doors of one serving app share, built here and handed to each door: REST
    (Litestar dependencies), the fast lane, WebSocket, agents/MCP and gRPC (constructors).
    Nothing is borrowed from ``app.state`` (tests/unit/test_composition_root.py)."""

    container: Container
    proxy: ProxyRuntime
    streams: Streams
    metrics: Metrics
    agents: AgentDoors

    def dependencies(self) -> dict[str, Provide]:
        """The Litestar dependencies: ``c`` (the container), ``runtime``, ``streams``,
        ``metrics``, ``agents``; each the one object built here."""
        from litestar.di import Provide

        parts: dict[str, object] = {
            "c": self.container,
            "runtime": self.proxy,
            "streams": self.streams,
            "metrics": self.metrics,
            "agents": self.agents,
        }
        return {
            name: Provide(_constant(part), use_cache=True, sync_to_thread=False)
            for name, part in parts.items()
        }

    def signature_namespace(self) -> dict[str, Any]:
        """The names the handlers' annotations use for these parts (imported for typing)."""
        return {
            type(part).__name__: type(part)
            for part in (self.container, self.proxy, self.streams, self.metrics, self.agents)
        }


def _constant(part: object) -> Callable[[], object]:
    def provide() -> object:
        return part

    return provide


def serving(container: Container) -> ServingDoors:
    """The parts one serving app's doors share (one set per app: its MCP session manager
    runs once, its runtime and streams stop with it)."""
    from interfaces.agents.routes import AgentDoors
    from interfaces.http.observability import Metrics
    from interfaces.ws.service import Streams

    runtime = proxy_runtime(container)
    return ServingDoors(
        container=container,
        proxy=runtime,
        streams=Streams(container, runtime),
        metrics=Metrics(container),
        agents=AgentDoors(container, runtime),
    )


def open_redis(settings: Settings) -> Any | None:
    """A Redis client when ``REDIS_URL``/``REDIS_HOST`` is set; in-process stand-ins otherwise."""
    if not settings.redis.url:
        return None
    import redis

    return redis.Redis.from_url(
        settings.redis.url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
    )


def open_providers(settings: Settings, db: Database | None = None) -> dict[str, GpuProvider]:
    """The enabled marketplaces: sandbox by default, vast.ai / io.net when keyed.

    On PostgreSQL the sandbox shares its instances with the other replicas through ``db``
    (docs/adr/0028); on SQLite (one process) they stay in this process."""
    providers: dict[str, GpuProvider] = {}
    if settings.providers.sandbox_enabled:
        from infrastructure.providers.sandbox import SandboxProvider
        from infrastructure.providers.sandbox_registry import SandboxRegistry

        providers["sandbox"] = SandboxProvider(
            provisioning_delay=settings.providers.sandbox_provisioning_delay,
            registry=(
                SandboxRegistry(db, timeout=settings.providers.sandbox_heartbeat_timeout)
                if db is not None and db.dialect == "postgres"
                else None
            ),
            bind_host=settings.providers.sandbox_bind_host,
            advertise_host=settings.providers.sandbox_advertise_host,
        )
    if settings.providers.vastai_api_key:
        from infrastructure.providers.vastai import VastAiProvider

        providers["vast.ai"] = VastAiProvider(
            base_url=settings.providers.vastai_api_url, api_key=settings.providers.vastai_api_key
        )
    if settings.providers.ionet_api_key:
        from infrastructure.providers.ionet import IoNetProvider

        providers["io.net"] = IoNetProvider(
            settings.providers.ionet_api_key, base_url=settings.providers.ionet_api_url
        )
    return providers


def open_processors(settings: Settings) -> dict[str, CardProcessor]:
    """Card processors with keys configured (Stripe, AfterDark)."""
    processors: dict[str, CardProcessor] = {}
    if settings.payments.stripe_secret_key:
        from infrastructure.payments.stripe_gateway import StripeGateway

        processors["stripe"] = StripeGateway(
            settings.payments.stripe_secret_key,
            webhook_secret=settings.payments.stripe_webhook_secret,
            api_base=settings.payments.stripe_api_base,
        )
    if settings.payments.afterdark_api_key:
        from infrastructure.payments.afterdark import AfterDarkGateway

        processors["afterdark"] = AfterDarkGateway(
            settings.payments.afterdark_api_key, base_url=settings.payments.afterdark_api_url
        )
    return processors


def open_chain(settings: Settings) -> tuple[ChainReader | None, CryptoConfig | None]:
    """The chain reader and crypto terms when crypto payments are enabled."""
    if not settings.payments.crypto_enabled:
        return None, None
    from infrastructure.payments.chain import (
        SUPPORTED_NETWORKS,
        USDC_CONTRACTS,
        JsonRpcChainReader,
    )

    network = settings.payments.crypto_network
    config = CryptoConfig(
        network=network,
        chain_id=SUPPORTED_NETWORKS[network],
        token=settings.payments.crypto_token_address or USDC_CONTRACTS[network].lower(),
        receiving_address=settings.payments.crypto_receiving_address,
        ttl=timedelta(seconds=settings.payments.crypto_payment_ttl),
        max_open=settings.payments.crypto_max_open_requests,
    )
    return JsonRpcChainReader(settings.payments.crypto_rpc_url), config


def revocation_signal(settings: Settings, redis: Any | None) -> RevocationSignal:
    """How processes tell each other that a credential or role changed."""
    if redis is not None:
        return RedisSignal(redis)
    if settings.db.type == "sqlite":
        return FileSignal(settings.db.data_dir / "credentials.epoch")
    return NoSignal()  # PostgreSQL without Redis: re-read the key row on every request


def session_store(settings: Settings, db: Database, redis: Any | None) -> SessionStore:
    if settings.auth.session_mode == "sql" or redis is None:
        return SqlSessions(db)
    if settings.auth.session_mode == "redis":
        return RedisSessions(redis)
    return BalancedSessions(SqlSessions(db), RedisSessions(redis))


def open_database(settings: Settings) -> Database:
    if settings.db.type == "postgres":
        return PostgresDatabase(
            settings.db.postgres_conninfo,
            max_size=max(2, settings.db.max_conns // 2),
            server_prepare=not settings.db.transaction_pooler,
        )
    return SqliteDatabase(settings.db.sqlite_path)


def bootstrap(
    settings: Settings | None = None,
    *,
    clock: Clock = system_clock,
    reference_clock: Clock | None = None,
    run_projections: bool = False,
    migrate: bool = True,
) -> Container:
    """Build the service graph. ``run_projections`` starts the runner (and PG listener).

    ``reference_clock`` bounds ``clock`` (default: PostgreSQL's clock bounds the real one).
    """
    settings = settings or load_settings()
    db = open_database(settings)
    clock = business_clock(settings, db, clock, reference_clock)
    if migrate:
        apply_migrations(db)
    app = open_ledger_app(settings)
    events = EventLog(app)
    runner = ProjectionRunner(
        db, events, ALL, poll_interval=settings.ledger.projection_poll_interval
    )
    ledger = LedgerService(
        app, policy=settings.ledger.guardrails, clock=clock, on_saved=runner.wake
    )
    redis = open_redis(settings)
    instances = instance_signal(settings.db.type, settings.db.data_dir, redis)
    signal = revocation_signal(settings, redis)
    processors = open_processors(settings)
    chain, crypto = open_chain(settings)
    users = UserStore(db, signal)
    container = Container(
        settings=settings,
        db=db,
        app=app,
        ledger=ledger,
        events=events,
        runner=runner,
        users=users,
        queries=LedgerQueries(db),
        auth=AuthService(
            users,
            ApiKeyStore(db, users, signal),
            session_store(settings, db, redis),
            TokenCodec(
                load_or_create_secret(settings.auth.jwt_secret, settings.db.data_dir),
                settings.auth.jwt_expiration_seconds,
            ),
            open_throttle(settings, redis),
        ),
        limiter=(
            RedisRateLimiter(redis, settings.auth.rate_limit_per_minute)
            if redis is not None
            else MemoryRateLimiter(settings.auth.rate_limit_per_minute)
        ),
        redis=redis,
        marketplace=MarketplaceService(
            ledger,
            open_providers(settings, db),
            clock=clock,
            config=MarketplaceConfig(
                markup_ppm=settings.marketplace.price_markup_ppm,
                guardrails_action=settings.marketplace.guardrails_action,
                spread=settings.marketplace.lb_strategy,
            ),
            on_instances_changed=instances.bump,
        ),
        payments=PaymentService(
            ledger, processors, clock=clock, crypto=crypto, setup=PAYMENT_SETUP_VARIABLES
        ),
        payment_queries=PaymentQueries(db),
        instance_queries=InstanceQueries(db),
        user_queries=UserQueries(db),
        stripe=processors.get("stripe"),
        chain=chain,
        instances_signal=instances,
    )
    if run_projections:
        if settings.db.type == "postgres":
            listener = PgWakeup(settings.db.direct_conninfo, events_channel(app.name), runner.wake)
            listener.start()
            container._closers.append(listener.stop)
        runner.start()
    return container
