"""The live OpenAPI document passes Spectral (``spectral:oas``) and Redocly (``recommended``)
with no errors and no warnings, and describes what the server does (issue 22, ADR 0025).

The linters are npm packages pinned in ``tests/contract/package-lock.json``; ``npm ci`` puts
them in a cache folder keyed by the lock file's hash, so a second run installs nothing. Without
node/npm the linter tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from infrastructure.settings import load_settings
from tests.support.http import JWT_SECRET, test_client

HERE = Path(__file__).resolve().parent
LOCK = HERE / "package-lock.json"
METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}
PUBLIC = {
    "/health",
    "/ready",
    "/metrics",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/api/v1/auth/register",
    "/api/v1/auth/login",
    "/api/v1/billing/webhooks/stripe",
    "/agent/discover",
    "/.well-known/agent-card.json",
}


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The document as a running app serves it at /schema/openapi.json."""
    folder = tmp_path_factory.mktemp("openapi")
    settings = load_settings(
        {"DATA_DIR": str(folder / "data"), "JWT_SECRET": JWT_SECRET}, env_file=None
    )
    with test_client(settings) as client:
        response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    path = folder / "openapi.json"
    path.write_bytes(response.content)
    return path


@pytest.fixture(scope="module")
def spec(spec_file: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(spec_file.read_text())
    return loaded


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield path, method, op


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    validate(spec)


# not-ready answers carry the probe's own body (the status code is the answer)
PROBE_BODIES = {
    ("/ready", "503"),
    ("/v2/health/ready", "503"),
    ("/v2/models/{name}/ready", "400"),
    ("/v2/models/{name}/versions/{version}/ready", "400"),
}


def test_errors_are_one_problem_schema_never_litestars_default(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            if int(status) < 400 or (path, status) in PROBE_BODIES:
                continue
            content = response.get("content", {})
            assert list(content) == ["application/problem+json"], (method, path, status)
            schema = content["application/problem+json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, (method, path, status)
    for name, schema in spec["components"]["schemas"].items():
        assert "extra" not in schema.get("properties", {}), name  # Litestar's default 400
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "errors"} <= set(problem["properties"])


def test_public_probes_document_the_card_guard_400_they_really_send(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    """Every route refuses a stored header holding a card number (``card_guard.py``), the
    public GET probes and documents included: they document that 400, and send it."""
    public_gets = [
        path
        for path, method, op in operations(spec)
        if method == "get" and op.get("security") == [] and not path.startswith("/schema")
    ]
    assert set(public_gets) >= {"/health", "/ready", "/metrics", "/v2", "/agent/discover"}
    settings = load_settings(
        {"DATA_DIR": str(tmp_path / "data"), "JWT_SECRET": JWT_SECRET}, env_file=None
    )
    with test_client(settings) as client:
        for path in public_gets:
            documented = spec["paths"][path]["get"]["responses"]["400"]
            assert "card number" in documented["description"], path
            response = client.get(path, headers={"User-Agent": "4111 1111 1111 1111"})
            assert response.status_code == 400, path
            assert response.headers["content-type"].startswith("application/problem+json")
            assert "User-Agent" in response.json()["detail"], path


def test_authenticated_routes_document_401_and_429(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        if op.get("security") == [] or path.startswith("/schema"):
            continue
        assert {"401", "429"} <= set(op["responses"]), (method, path)


def test_public_routes_say_security_empty_and_the_rest_need_a_credential(
    spec: dict[str, Any],
) -> None:
    assert spec["security"] == [{"ApiKey": []}, {"Bearer": []}]
    public = {path for path, _, op in operations(spec) if op.get("security") == []}
    assert public >= PUBLIC
    assert public - PUBLIC <= {p for p in public if p.startswith("/schema")}


def test_operation_ids_are_unique_camel_case_without_stutter(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    for op_id in ids:
        assert op_id[0].islower(), op_id
        assert op_id.isalnum(), op_id
        words = [w.lower() for w in _words(op_id)]
        assert all(a != b for a, b in itertools.pairwise(words)), op_id
    by_path = {(p, m): op["operationId"] for p, m, op in operations(spec)}
    assert by_path[("/health", "get")] == "getHealth"
    assert by_path[("/v2/models/{name}/infer", "post")] == "inferModel"


def _words(camel: str) -> list[str]:
    words, current = [], ""
    for char in camel:
        if char.isupper() and current:
            words.append(current)
            current = ""
        current += char
    return [*words, current]


def test_every_operation_is_described_in_its_own_words(spec: dict[str, Any]) -> None:
    """A description per route (what, who, what changes, errors), not one template: two
    operations share one only when they are one handler's methods or paths (one summary)."""
    summary_of: dict[str, str] = {}
    for path, method, op in operations(spec):
        if path.startswith("/schema"):
            continue
        description = op.get("description", "")
        assert len(description) >= 80, (method, path, description)
        assert description != op.get("summary"), (method, path)
        assert summary_of.setdefault(description, op["summary"]) == op["summary"], (method, path)


def test_post_put_patch_routes_have_a_request_body(spec: dict[str, Any]) -> None:
    bodiless = {"/api/v1/auth/logout"}  # ends the caller's session: nothing to send
    for path, method, op in operations(spec):
        if method in {"post", "put", "patch"} and path not in bodiless:
            assert "requestBody" in op, (method, path)


def test_no_path_templates_that_differ_only_in_parameter_names(spec: dict[str, Any]) -> None:
    shapes: dict[str, str] = {}
    for path in spec["paths"]:
        shape = "/".join("{}" if s.startswith("{") else s for s in path.split("/"))
        assert shapes.setdefault(shape, path) == path, (path, shapes[shape])


def test_typed_answers_for_the_money_routes(spec: dict[str, Any]) -> None:
    def ok_schema(path: str, method: str = "get") -> Any:
        responses = spec["paths"][path][method]["responses"]
        success = next(r for s, r in responses.items() if s.startswith("2"))
        return success["content"]["application/json"]["schema"]

    assert ok_schema("/api/v1/billing/credits") == {"$ref": "#/components/schemas/Credits"}
    credits = spec["components"]["schemas"]["Credits"]["properties"]
    assert credits["credits_available"]["type"] == "string"
    for path in ("/api/v1/billing/transactions", "/api/v1/guardrails/spending"):
        assert "$ref" in ok_schema(path), path
    assert "$ref" in ok_schema("/api/v1/gpu/instances/{provider}/{id}", "post")


# ------------------------------------------------------------------ outside linters


def _linters() -> Path | None:
    """``node_modules/.bin`` with the pinned Spectral and Redocly (``npm ci`` once per lock)."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are needed for the OpenAPI linters under CI=true")
        pytest.skip("node/npm not installed")
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    folder = cache / "gpuproxy-openapi-lint" / digest
    bin_dir = folder / "node_modules" / ".bin"
    if not (bin_dir / "spectral").exists() or not (bin_dir / "redocly").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(HERE / name, folder / name)
        subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
            cwd=folder,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return bin_dir


def test_spectral_oas_finds_nothing(spec_file: Path) -> None:
    bin_dir = _linters()
    assert bin_dir is not None
    result = subprocess.run(
        [
            str(bin_dir / "spectral"),
            "lint",
            "--ruleset",
            str(HERE / ".spectral.yaml"),
            "--format",
            "json",
            "--fail-severity",
            "warn",
            str(spec_file),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    # the JSON list, then (when it is empty) a "No results …" line
    findings, _ = json.JSONDecoder().raw_decode(result.stdout, result.stdout.index("["))
    assert findings == [], findings[:5]  # no errors, and no warnings either (issue 22)
    assert result.returncode == 0, result.stderr


def test_redocly_recommended_finds_nothing(spec_file: Path) -> None:
    bin_dir = _linters()
    assert bin_dir is not None
    result = subprocess.run(
        [
            str(bin_dir / "redocly"),
            "lint",
            "--config",
            str(HERE / "redocly.yaml"),
            "--format",
            "json",
            str(spec_file),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
        env={**os.environ, "REDOCLY_TELEMETRY": "off", "REDOCLY_SUPPRESS_UPDATE_NOTICE": "true"},
    )
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["problems"] == [], report["problems"][:5]  # no errors, and no warnings
    assert result.returncode == 0, result.stderr
