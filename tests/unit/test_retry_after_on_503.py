"""Every 503 tells the client when to retry (DESIGN §3 Faults: 503 with Retry-After)."""

from __future__ import annotations

import psycopg
import pytest

from domain.balancing import NoBackendError
from domain.errors import ConcurrencyError, DomainError, InstancesBehindError
from infrastructure.identity.sessions import SessionStoreUnavailableError
from interfaces.http.errors import make_internal_handler, on_domain_error


class _Request:  # the handlers read only the method and path (for the log line)
    method = "GET"

    class url:  # noqa: N801 - shaped like litestar's URL
        path = "/api/v1/gpu/proxy/pool/x"


@pytest.mark.parametrize(
    "error",
    [
        InstancesBehindError("catching up"),
        ConcurrencyError("busy"),
        SessionStoreUnavailableError("down"),
        NoBackendError("none"),
    ],
)
def test_domain_503_carries_retry_after(error: DomainError) -> None:
    response = on_domain_error(_Request(), error)  # type: ignore[arg-type]
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1


def test_a_lost_database_connection_is_503_with_retry_after() -> None:
    handler = make_internal_handler(developer_mode=False)
    try:
        try:
            raise psycopg.errors.AdminShutdown("terminating connection")
        except psycopg.Error as exc:
            raise RuntimeError("while reading") from exc  # wrapped by a library
    except RuntimeError as wrapped:
        response = handler(_Request(), wrapped)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1


def test_other_errors_stay_500() -> None:
    response = make_internal_handler(developer_mode=False)(_Request(), ValueError("bug"))
    assert response.status_code == 500
    assert "Retry-After" not in response.headers
