"""Fuzzing the REST API: no input, however malformed, gets a 5xx.

Two generators against the real app in-process, on SQLite, authenticated as an admin (so
every route is reachable):

- schemathesis over the app's own OpenAPI schema (``/schema/openapi.json``), with data that
  fits the schema and data that does not;
- Hypothesis posting arbitrary JSON values, and objects with the route's own field names
  holding arbitrary JSON or plausible values (so some bodies get past validation to the
  handler and the database), to every POST/PUT route the schema lists.

5xx answers that are already reported are listed in ``known_bug`` (each pinned by a strict
xfail in tests/integration/http_auth/), so a new one fails this file and an old one is not hidden.

Both are bounded (a few dozen examples per operation) so the file runs in well under 90 s.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from domain.guardrails import WINDOW_NAMES, GuardrailPolicy
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app
from tests.support.http import JWT_SECRET, test_client

SCHEMA_PATH = "/schema/openapi.json"
PASSWORD = "correct-horse-battery"
MAX_EXAMPLES = 25
MAX_INT64 = 2**63 - 1

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the working tree
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
JSON_SETTINGS = settings(FUZZ_SETTINGS, max_examples=4 * MAX_EXAMPLES)


@dataclass(frozen=True)
class Target:
    container: Container
    headers: dict[str, str]
    admin_id: str
    victim_id: str
    spare_key_id: str


def _fuzz_settings(sqlite_settings: Settings) -> Settings:
    return dataclasses.replace(
        sqlite_settings,
        auth=dataclasses.replace(
            sqlite_settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=10_000_000
        ),
        ledger=dataclasses.replace(
            sqlite_settings.ledger,
            guardrails=GuardrailPolicy(enabled=True, limits={"60MIN": 50_000_000}),
        ),
    )


def _populate(container: Container) -> Target:
    """An admin (whose key the fuzzers use) and a funded ordinary user to aim at."""
    admin = container.users.create("admin@example.com", PASSWORD, "Admin")
    container.ledger.open_account(admin.id)
    container.users.set_admin(admin.email)
    _, key = container.auth.keys.create(admin.id, "fuzzer")
    spare, _ = container.auth.keys.create(admin.id, "spare, may be revoked")
    victim = container.users.create("victim@example.com", PASSWORD, "Victim")
    container.ledger.grant(victim.id, 100_000_000, key="fund-victim", reason="fund")
    container.ledger.grant(admin.id, 100_000_000, key="fund-admin", reason="fund")
    container.runner.catch_up()
    return Target(container, {"X-API-Key": key}, admin.id, victim.id, spare.id)


def known_bug(method: str, path: str, query: dict[str, Any] | None, status: int) -> str | None:
    """5xx answers already reported and pinned by a strict xfail in tests/integration/http_auth/.

    None are known now; add an entry (with its pinned test) when a new one is reported.
    """
    del method, path, query, status
    return None


def _run_each(jobs: dict[str, Callable[[], None]]) -> list[str]:
    """Run every job; one job's failure must not hide another's."""
    failures = []
    for name, job in jobs.items():
        try:
            job()
        except Exception as exc:
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    return failures


# --------------------------------------------------------------------------------- schemathesis


@pytest.fixture
def target(sqlite_settings: Settings) -> Iterator[tuple[Any, Target]]:
    container = bootstrap(_fuzz_settings(sqlite_settings))
    app = create_app(container)
    try:
        yield app, _populate(container)
    finally:
        from schemathesis.python import asgi

        asgi.shutdown_lifespans()  # schemathesis keeps the app's lifespan open otherwise
        container.close()


def _fuzz_operation(
    op: Any,
    mode: GenerationMode,
    path_parameters: dict[str, Any] | None,
    headers: dict[str, str],
    statuses: dict[str, set[int]],
) -> Callable[[], None]:
    @FUZZ_SETTINGS
    @given(case=op.as_strategy(mode, path_parameters=path_parameters))
    def run(case: Any) -> None:
        response = case.call(headers=headers)
        statuses.setdefault(op.label, set()).add(response.status_code)
        if response.status_code < 500:
            return
        if known_bug(op.method, op.path, case.query, response.status_code):
            return
        raise AssertionError(
            f"{mode.value}: {response.status_code} for "
            f"{case.as_curl_command(headers=headers)}\n{response.text[:500]}"
        )

    if mode is not GenerationMode.NEGATIVE:
        return run

    def run_negative() -> None:
        # A public operation with no parameters and no body has no invalid input to make;
        # any other operation must be fuzzed with invalid input.
        try:
            run()
        except Unsatisfiable:
            raw = op.definition.raw
            if raw.get("parameters") or raw.get("requestBody") or raw.get("security") != []:
                raise

    return run_negative


def test_openapi_fuzz_finds_no_server_error(target: tuple[Any, Target]) -> None:
    app, t = target
    schema = schemathesis.openapi.from_asgi(SCHEMA_PATH, app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    statuses: dict[str, set[int]] = {}
    jobs: dict[str, Callable[[], None]] = {}
    for op in operations:
        fixed: dict[str, Any] = {}
        if "{user_id}" in op.path:
            # The role route gets the ordinary user, so the fuzzing admin stays an admin.
            fixed["user_id"] = t.victim_id if op.path.endswith("/role") else t.admin_id
        if "{key_id}" in op.path:
            fixed["key_id"] = t.spare_key_id
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            jobs[f"{op.label} [{mode.value}]"] = _fuzz_operation(
                op, mode, None, t.headers, statuses
            )
            if fixed:
                jobs[f"{op.label} [{mode.value}, real ids]"] = _fuzz_operation(
                    op, mode, fixed, t.headers, statuses
                )

    failures = _run_each(jobs)
    assert not failures, "\n\n".join(failures)
    # The admin key worked throughout: authenticated routes answered something other than 401.
    assert statuses["GET /api/v1/admin/stats"] == {200}
    assert 200 in statuses["GET /api/v1/billing/credits"]
    # Aimed at real rows, admin routes did reach their handlers and succeeded at least once.
    assert 200 in statuses["GET /api/v1/admin/users/{user_id}"]
    assert t.container.users.by_id(t.admin_id).is_admin


# ------------------------------------------------------------------------- random JSON bodies


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
        st.sampled_from(
            [
                "",
                "0",
                "-1",
                "1.0000001",
                "NaN",
                "-Infinity",
                "Infinity",
                "1e400",
                "1e-400",
                "0x10",
                "1_000",
                " 5 ",
                "60min",
                "72H",
                "bogus",
                "2026-01-01T00:00:00Z",
                "9999-12-31T23:59:59",
                "0001-01-01",
                "admin@example.com",
                "\u202e",
                "x" * 2000,
            ]
        ),
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=12), children, max_size=4)
        ),
        max_leaves=12,
    )


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        node = spec["components"]["schemas"][name]
    return node


def _body_routes(spec: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """Every POST/PUT route with the property names of its JSON body."""
    routes = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method not in {"post", "put"}:
                continue
            content = operation.get("requestBody", {}).get("content", {})
            body_schema = content.get("application/json", {}).get("schema", {})
            fields = (
                sorted(_resolve(spec, body_schema).get("properties", {})) if body_schema else []
            )
            routes.append((method.upper(), path, fields))
    return routes


# Characters that trip storage and parsers: NUL, controls, bidi override, astral, quoting.
NASTY_TEXT = st.text(
    alphabet=st.sampled_from(
        ["\x00", "\x1f", "\x7f", "\u202e", "\U0001f600", "'", '"', "\\", "%", "a"]
    ),
    min_size=1,
    max_size=12,
)


def _usd() -> st.SearchStrategy[Any]:
    return st.decimals(min_value=-5, max_value=1000, places=6).map(str) | st.integers(-5, 1000)


def _plausible(field: str) -> st.SearchStrategy[Any]:
    """Values a field's validator may accept, so bodies get past it to the handler."""
    text = st.text(max_size=30) | NASTY_TEXT
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "email": st.emails() | text.map(lambda s: f"{s}@example.com"),
        "password": st.text(min_size=8, max_size=30) | NASTY_TEXT.map(lambda s: s * 8),
        "name": st.text(min_size=1, max_size=30) | NASTY_TEXT,
        "reason": text,
        "amount": _usd(),
        "cap": _usd(),
        "estimated_cost": _usd(),
        "window": st.sampled_from(WINDOW_NAMES) | text,
        "limits": st.dictionaries(
            st.sampled_from([*WINDOW_NAMES, "60min", "48h"]) | text, _usd() | st.none(), max_size=3
        ),
        "is_admin": st.booleans(),
        "expires_at": st.datetimes().map(lambda d: d.isoformat()) | st.none(),
    }
    return plausible.get(field, json_values())


def _bodies(fields: list[str]) -> st.SearchStrategy[Any]:
    values = json_values()
    if not fields:
        return values
    optional = {name: st.one_of(_plausible(name), values) for name in fields}
    shaped = st.fixed_dictionaries({}, optional=optional) | st.builds(
        lambda known, extra: {**extra, **known},
        st.fixed_dictionaries({}, optional=optional),
        st.dictionaries(st.text(max_size=12), values, max_size=2),
    )
    return st.one_of(values, shaped, shaped)


def _post_json(
    client: Any,
    method: str,
    path: str,
    fields: list[str],
    t: Target,
    seen: dict[str, set[int]],
) -> Callable[[], None]:
    user = t.victim_id if path.endswith("/role") else t.admin_id
    url = path.replace("{user_id}", user).replace("{key_id}", t.spare_key_id)
    label = f"{method} {path}"

    @JSON_SETTINGS
    @given(body=_bodies(fields), idempotency=st.none() | st.text(min_size=1, max_size=8))
    def run(body: Any, idempotency: str | None) -> None:
        headers = {**t.headers, "content-type": "application/json"}
        if idempotency is not None and idempotency.isascii() and idempotency.isprintable():
            headers["Idempotency-Key"] = idempotency
        raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
        response = client.request(method, url, content=raw, headers=headers)
        seen.setdefault(label, set()).add(response.status_code)
        assert response.status_code < 500, (
            f"{method} {url} {raw[:300]!r} -> {response.status_code} {response.text[:300]}"
        )
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json")
            problem = response.json()
            assert {"status", "title", "detail", "error"} <= set(problem), problem

    return run


def test_random_json_bodies_never_get_a_server_error(sqlite_settings: Settings) -> None:
    with test_client(_fuzz_settings(sqlite_settings)) as client:
        t = _populate(client.app.state.container)
        spec = client.get(SCHEMA_PATH).json()
        routes = _body_routes(spec)
        assert len(routes) >= 10, routes
        seen: dict[str, set[int]] = {}

        jobs = {
            f"{method} {path}": _post_json(client, method, path, fields, t, seen)
            for method, path, fields in routes
        }
        failures = _run_each(jobs)
        assert not failures, "\n\n".join(failures)
        # Bodies reached validation on every route: the admin key was accepted throughout.
        assert set(seen) == set(jobs)
        refused_input = {400, 402, 404, 409, 413, 415}
        assert all(statuses & refused_input for statuses in seen.values()), seen
        assert t.container.users.by_id(t.admin_id).is_admin


# ------------------------------------------------------------- boundary path and query values

# Strings at the edges of what a route's parameters parse: dates out of datetime's range,
# integers past int64, non-UUIDs, empty-ish, controls, unicode and overlong values.
BOUNDARY_VALUES = [
    "0000-01",
    "9999-12",
    "0000-00",
    "2026-13",
    "10000-01",
    "-0001-01",
    "0",
    "-1",
    str(MAX_INT64),
    str(MAX_INT64 + 1),
    str(-(2**63) - 1),
    "9" * 400,
    "1e400",
    "NaN",
    "-Infinity",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
    "not-a-uuid",
    " ",
    ".",
    "..",
    "null",
    "true",
    "\x00",
    "\x7f",
    "\u202e",
    "é",
    "\U0001f600",
    "a/b",
    "%",
    "x" * 5000,
]


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield method.upper(), path, operation.get("parameters", [])


def test_boundary_path_and_query_values_never_get_a_server_error(
    sqlite_settings: Settings,
) -> None:
    """Every path parameter, then every query parameter, of every route gets each boundary."""
    from urllib.parse import quote

    with test_client(_fuzz_settings(sqlite_settings)) as client:
        t = _populate(client.app.state.container)
        spec = client.get(SCHEMA_PATH).json()
        headers = {**t.headers, "content-type": "application/json"}
        failures: list[str] = []
        sent = {"path": 0, "query": 0}

        def send(method: str, url: str, **kwargs: Any) -> None:
            body = b"{}" if method in {"POST", "PUT", "PATCH"} else None
            response = client.request(method, url, content=body, headers=headers, **kwargs)
            if response.status_code >= 500:
                failures.append(f"{method} {url[:120]} {kwargs} -> {response.status_code}")

        for method, path, parameters in _operations(spec):
            names = [p["name"] for p in parameters if p["in"] == "path"]
            zero = "00000000-0000-0000-0000-000000000000"
            for name in names:
                for value in BOUNDARY_VALUES:
                    url = path
                    for other in names:
                        url = url.replace(
                            f"{{{other}}}", quote(value, safe="") if other == name else zero
                        )
                    send(method, url)
                    sent["path"] += 1
            if names:
                continue  # query values are tried on routes without path ids (they get past 404)
            for parameter in (p for p in parameters if p["in"] == "query"):
                for value in BOUNDARY_VALUES:
                    send(method, path, params={parameter["name"]: value})
                    sent["query"] += 1
        assert not failures, "\n".join(failures[:40])
        assert sent["path"] >= 40 * len(BOUNDARY_VALUES), sent
        assert sent["query"] >= 10 * len(BOUNDARY_VALUES), sent
        assert t.container.users.by_id(t.admin_id).is_admin
