"""The Litestar application: routers, one error model, OpenAPI, CORS, body limit, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.spec import Components, Contact, License, SecurityScheme

from domain.errors import DomainError
from interfaces.agents import routes as agents
from interfaces.bootstrap import ServingDoors, serving
from interfaces.http import docs_assets
from interfaces.http.card_guard import refuse_card_numbers
from interfaces.http.compression import compression_config
from interfaces.http.controllers import (
    admin,
    auth,
    billing,
    gpu,
    health,
    money,
    oip,
    proxy,
    usage_sessions,
    what_if,
)
from interfaces.http.controllers import models as model_routes
from interfaces.http.errors import (
    make_internal_handler,
    on_domain_error,
    on_http_error,
    on_too_deep,
    on_validation_error,
)
from interfaces.http.fast_lane import FastLane
from interfaces.http.forwarded import TrustedProxies, parse_networks
from interfaces.http.front import Front
from interfaces.http.json_body import AppRequest
from interfaces.http.observability import Observer
from interfaces.http.openapi import AUTH_SCHEMES, DESCRIPTION, TAGS, operation_id
from interfaces.web import admin_api, dashboard
from interfaces.ws.service import streams_socket

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

VERSION = "0.1.0"
SHUTDOWN_STEP_SECONDS = 20.0
log = logging.getLogger(__name__)


async def _bounded(name: str, step: Awaitable[Any]) -> None:
    """One shutdown step, given at most ``SHUTDOWN_STEP_SECONDS``: a stuck one must not keep
    the process from stopping (what it leaves is recovered as after a crash)."""
    try:
        await asyncio.wait_for(step, SHUTDOWN_STEP_SECONDS)
    except TimeoutError:
        log.error("shutdown: %s took over %.0f s; going on", name, SHUTDOWN_STEP_SECONDS)


def create_app(
    container: Container,
    *,
    developer_mode: bool = False,
    run_jobs: bool = False,
    fast_lane: bool = True,
    doors: ServingDoors | None = None,
) -> Litestar:
    """Build the HTTP app over an already-wired container (the composition root owns it).

    ``fast_lane`` answers the hottest routes before Litestar's routing (``fast_lane.py``);
    off, Litestar serves them too (the tests compare both doors).
    """
    doors = doors or serving(container)  # the composition root builds what the doors share
    metrics, runtime, streams = doors.metrics, doors.proxy, doors.streams
    observer = Observer(metrics)
    settings = container.settings
    cors = (
        CORSConfig(allow_origins=list(settings.http.cors_origins))
        if settings.http.cors_origins
        else None
    )
    openapi = OpenAPIConfig(
        title="GPU Proxy",
        version=VERSION,
        description=DESCRIPTION,
        # pyproject's licence is "Proprietary": no SPDX id, so an SPDX LicenseRef- for it
        license=License(name="Proprietary", identifier="LicenseRef-Proprietary"),
        contact=Contact(name="aiserve", url=settings.http.base_url),  # as the agent card's provider
        tags=TAGS,
        path="/schema",
        render_plugins=docs_assets.render_plugins(),  # assets served by this app, no CDN
        components=Components(
            security_schemes={
                "ApiKey": SecurityScheme(
                    type="apiKey", name="X-API-Key", security_scheme_in="header"
                ),
                "Bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT"),
            }
        ),
        security=AUTH_SCHEMES,  # public operations say security: [] (openapi.py)
        operation_id_creator=operation_id,
    )
    handlers: dict[Any, Any] = {
        DomainError: on_domain_error,
        ValidationException: on_validation_error,
        HTTPException: on_http_error,
        RecursionError: on_too_deep,
        Exception: make_internal_handler(developer_mode),
    }
    tasks: list[asyncio.Task[None]] = []

    async def start_jobs() -> None:
        tasks.append(asyncio.create_task(runtime.run_forever()))
        tasks.append(asyncio.create_task(streams.run_forever()))
        if run_jobs:
            tasks.append(asyncio.create_task(container.jobs().run_forever()))
            tasks.append(asyncio.create_task(container.payment_jobs().run_forever()))
            tasks.append(asyncio.create_task(container.hold_sweep().run_forever()))

    async def stop_jobs() -> None:
        for task in tasks:
            task.cancel()
        await _bounded("background jobs", asyncio.gather(*tasks, return_exceptions=True))
        await _bounded("streams", streams.aclose())
        await _bounded("proxy runtime", runtime.aclose())  # unsettled leases expire on their own
        await _bounded("providers", container.aclose_providers())

    models = container.model_service()  # cheap: sessions load on first use

    async def start_models() -> None:
        models.start()

    async def stop_models() -> None:
        await _bounded("model service", models.aclose())

    app = Litestar(
        on_startup=[start_jobs, start_models],
        on_shutdown=[stop_jobs, stop_models],
        route_handlers=[
            *health.handlers,
            auth.router,
            money.router,
            usage_sessions.router,
            what_if.router,
            admin.router,
            gpu.router,
            billing.router,
            billing.webhooks,
            billing.admin_router,
            proxy.router,
            *agents.route_handlers(doors.agents),
            streams_socket,
            dashboard.router,
            admin_api.router,
            model_routes.router(settings.models.max_request_bytes),
            oip.router(settings.models.max_request_bytes),
            oip.health,
            docs_assets.docs_asset,
        ],
        lifespan=[doors.agents.running],
        dependencies=doors.dependencies(),  # c, runtime, streams, metrics, agents
        signature_namespace=doors.signature_namespace(),
        exception_handlers=handlers,
        openapi_config=openapi,
        cors_config=cors,
        compression_config=compression_config(),  # never the proxy's passthrough
        request_max_body_size=settings.http.max_body_bytes,
        request_class=AppRequest,
        before_request=refuse_card_numbers,  # no card number in a header that is stored
        debug=False,
        logging_config=None,  # the server process owns logging (file, syslog)
    )
    # one outer layer (front.py): the real client, the fast lane, then metrics, access log,
    # rate-limit headers and HEAD-as-GET for Litestar's routes and its 404/405
    lane = FastLane(
        app.asgi_handler,
        container=container,
        runtime=runtime,
        observer=observer,
        exception_handlers=handlers,
        cors=cors is not None,
    )
    app.asgi_handler = Front(
        app.asgi_handler,
        router=app.asgi_router,
        observer=observer,
        lane=lane if fast_lane else None,
        proxies=TrustedProxies(parse_networks(settings.http.forwarded_allow_ips)),
    )
    # published for tests and tools only: no door reads app.state (its parts are injected)
    app.state.container = container
    app.state.metrics = metrics
    app.state.proxy = runtime
    app.state.streams = streams
    return app
