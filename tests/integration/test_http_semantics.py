"""HTTP by the RFCs (issue 22): HEAD everywhere, compression, validators and 304s, problem
titles, RateLimit fields, unmatched requests counted, metrics that ``promtool`` accepts, OIP v2
model readiness in the status code. One in-process app on SQLite (Litestar's test client)."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import brotli
import pytest
from litestar import Litestar, Response, get
from litestar.response import Stream
from litestar.testing import TestClient

from infrastructure.settings import load_settings
from interfaces.http.compression import choose_coding, compression_config
from tests.conftest import IN_CI
from tests.integration.test_models_support import dense_onnx
from tests.integration.test_ws import Account, make_user
from tests.support.http import JWT_SECRET, test_client

IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    data: Path = tmp_path_factory.mktemp("semantics")
    settings = load_settings(
        {"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET, "RATE_LIMIT_PER_MINUTE": "1000"},
        env_file=None,
    )
    with test_client(settings) as c:
        yield c


@pytest.fixture(scope="module")
def alice(client: TestClient[Any]) -> Account:
    return make_user(client.app.state.container, "alice")


def _metrics(client: TestClient[Any]) -> str:
    return client.get("/metrics", headers=IDENTITY).text


# ------------------------------------------------------------------ HEAD (RFC 9110 §9.3.2)


@pytest.mark.parametrize(
    "path",
    [
        "/health",
        "/v2/health/live",
        "/admin/static/app.js",
        "/admin/",
        "/metrics",
        "/schema/assets/swagger-ui.css",
    ],
)
def test_head_answers_like_get_without_a_body(client: TestClient[Any], path: str) -> None:
    for encoding in ("identity", "gzip"):
        headers = {"Accept-Encoding": encoding}
        got = client.get(path, headers=headers)
        head = client.head(path, headers=headers)
        assert head.status_code == got.status_code == 200, (path, head.text)
        assert head.content == b""
        for name in ("content-type", "content-encoding", "etag", "last-modified", "vary"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)
        if "content-length" in got.headers and path != "/metrics":  # (metrics move)
            assert head.headers["content-length"] == got.headers["content-length"]


def test_head_keeps_authentication_rate_limits_and_the_fast_lane(
    client: TestClient[Any], alice: Account
) -> None:
    assert client.head("/api/v1/billing/credits").status_code == 401
    head = client.head("/api/v1/billing/credits", headers={"X-API-Key": alice.key})
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert head.headers["x-ratelimit-limit"] == "1000"
    assert 'method="HEAD",route="/api/v1/billing/credits",status="200"' in _metrics(client)


def test_head_on_a_path_without_get_is_still_refused(client: TestClient[Any]) -> None:
    assert client.head("/api/v1/auth/login").status_code == 405
    assert client.head("/no/such/path").status_code == 404


# ------------------------------------------------------------------ compression


def test_accept_encoding_negotiation_follows_quality_values() -> None:
    assert choose_coding(None) is None
    assert choose_coding("identity") is None
    assert choose_coding("gzip") == "gzip"
    assert choose_coding("gzip, br") == "br"
    assert choose_coding("br;q=0, gzip") == "gzip"
    assert choose_coding("gzip;q=0") is None
    assert choose_coding("*") == "br"
    assert choose_coding("*;q=0.5, br;q=0") == "gzip"
    assert choose_coding("GZIP;Q=0.8, br;q=0.5") == "gzip"


@pytest.mark.parametrize("path", ["/metrics", "/admin/static/app.js"])
def test_large_responses_are_compressed_as_asked(client: TestClient[Any], path: str) -> None:
    plain = client.get(path, headers=IDENTITY)
    assert "content-encoding" not in plain.headers
    assert len(plain.content) >= 1024
    assert "accept-encoding" in plain.headers["vary"].lower()
    for coding, decode in (("gzip", gzip.decompress), ("br", brotli.decompress)):
        with client.stream("GET", path, headers={"Accept-Encoding": coding}) as raw:
            assert raw.headers["content-encoding"] == coding
            assert "accept-encoding" in raw.headers["vary"].lower()
            body = decode(b"".join(raw.iter_raw()))
        if path != "/metrics":  # metrics move between two scrapes
            assert body == plain.content
        else:
            assert b"gpuproxy_http_requests_total" in body


def test_small_responses_and_refused_codings_are_sent_as_they_are(
    client: TestClient[Any],
) -> None:
    small = client.get("/health", headers={"Accept-Encoding": "gzip, br"})
    assert "content-encoding" not in small.headers
    refused = client.get("/admin/static/app.js", headers={"Accept-Encoding": "gzip;q=0, br;q=0"})
    assert "content-encoding" not in refused.headers


def test_streams_encoded_answers_and_the_proxy_are_never_compressed() -> None:
    """The middleware on a small Litestar app of its own: what it must leave as it is."""
    big = b"x" * 4096

    async def events() -> AsyncIterator[bytes]:
        yield b"data: " + big + b"\n\n"

    @get("/events")
    async def stream() -> Stream:
        return Stream(events(), media_type="text/event-stream")

    @get("/encoded")
    async def encoded() -> Response[bytes]:
        body = gzip.compress(big)
        return Response(body, media_type="text/plain", headers={"Content-Encoding": "gzip"})

    @get(["/plain", "/api/v1/gpu/proxy", "/api/v1/gpu/proxy/pool/x"])
    async def plain() -> Response[bytes]:
        return Response(big, media_type="text/plain")

    app = Litestar([stream, encoded, plain], compression_config=compression_config())
    with TestClient(app) as c:
        asked = {"Accept-Encoding": "gzip, br"}
        assert c.get("/plain", headers=asked).headers["content-encoding"] == "br"
        sse = c.get("/events", headers=asked)
        assert "content-encoding" not in sse.headers
        assert sse.content.startswith(b"data: xxx")
        with c.stream("GET", "/encoded", headers=asked) as once:
            assert once.headers["content-encoding"] == "gzip"  # the handler's own, not twice
            assert gzip.decompress(b"".join(once.iter_raw())) == big
        for path in ("/api/v1/gpu/proxy", "/api/v1/gpu/proxy/pool/x"):
            assert "content-encoding" not in c.get(path, headers=asked).headers, path


# ------------------------------------------------------------------ validators and 304


@pytest.mark.parametrize("path", ["/admin/static/app.js", "/schema/assets/redoc.standalone.js"])
def test_static_assets_have_validators_and_answer_304(client: TestClient[Any], path: str) -> None:
    first = client.get(path, headers=IDENTITY)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag), etag  # strong: a content hash
    same = client.get(path, headers={**IDENTITY, "If-None-Match": etag})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == etag
    assert same.headers.get("cache-control") == first.headers.get("cache-control")
    listed = client.get(path, headers={**IDENTITY, "If-None-Match": f'"x", W/{etag}'})
    assert listed.status_code == 304  # weak comparison, a list
    assert client.get(path, headers={**IDENTITY, "If-None-Match": '"other"'}).status_code == 200
    assert client.get(path, headers={**IDENTITY, "If-Modified-Since": modified}).status_code == 304
    old = formatdate(0, usegmt=True)
    assert client.get(path, headers={**IDENTITY, "If-Modified-Since": old}).status_code == 200
    both = {**IDENTITY, "If-None-Match": '"other"', "If-Modified-Since": modified}
    assert client.get(path, headers=both).status_code == 200  # If-None-Match wins
    compressed = client.get(path, headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["etag"] == f"W/{etag}"  # another representation: weak
    again = client.get(path, headers={"Accept-Encoding": "gzip", "If-None-Match": f"W/{etag}"})
    assert again.status_code == 304


# ------------------------------------------------------------------ problem details, RateLimit


def test_problem_title_is_the_status_phrase(client: TestClient[Any], alice: Account) -> None:
    missing = client.get("/api/v1/models/nope", headers={"X-API-Key": alice.key}).json()
    assert missing["title"] == "Not Found"
    assert "not found" in missing["detail"].lower()
    bad = client.post("/api/v1/auth/login", json={"email": 5}).json()
    assert (bad["title"], bad["status"]) == ("Bad Request", 400)
    assert client.delete("/health").json()["title"] == "Method Not Allowed"


def test_ratelimit_fields_with_the_legacy_trio(client: TestClient[Any], alice: Account) -> None:
    answer = client.get("/api/v1/billing/credits", headers={"X-API-Key": alice.key})
    h = answer.headers
    assert h["ratelimit-policy"] == '"per-user";q=1000;w=60'
    match = re.fullmatch(r'"per-user";r=(\d+);t=(\d+)', h["ratelimit"])
    assert match is not None, h["ratelimit"]
    assert int(match[1]) == int(h["x-ratelimit-remaining"])
    assert 0 <= int(match[2]) <= 60  # seconds, like Retry-After
    assert int(h["x-ratelimit-reset"]) > 1_700_000_000  # an epoch time


# ------------------------------------------------------------------ metrics


def test_router_404_and_405_are_counted(client: TestClient[Any]) -> None:
    assert client.get("/no/such/route").status_code == 404
    refused = client.put("/health")
    assert refused.status_code == 405
    allowed = {m.strip() for m in refused.headers["allow"].split(",")}
    assert {"GET", "HEAD"} <= allowed  # RFC 9110 §15.5.6: HEAD is served wherever GET is
    text = _metrics(client)
    assert 'gpuproxy_http_requests_total{method="GET",route="unmatched",status="404"}' in text
    assert 'gpuproxy_http_requests_total{method="PUT",route="unmatched",status="405"}' in text


def test_metric_types_names_and_collectors(client: TestClient[Any]) -> None:
    text = _metrics(client)
    assert "# TYPE gpuproxy_ledger_commands_total counter" in text
    assert "# TYPE gpuproxy_ledger_commit_batches_total counter" in text
    assert "_created" not in text
    assert re.search(r"^process_resident_memory_bytes \S+$", text, re.M)
    assert "# TYPE gpuproxy_grpc_server_handled_total counter" in text
    assert "# TYPE gpuproxy_grpc_server_handling_seconds histogram" in text


def test_promtool_check_metrics_is_clean(client: TestClient[Any], tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool missing (Debian package 'prometheus'; .ci/run installs it)")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    client.get("/health")
    text = _metrics(client)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (result.stdout + result.stderr).strip()  # no lint warning either


# ------------------------------------------------------------------ OIP v2 readiness


def test_oip_model_ready_status_code_carries_the_answer(
    client: TestClient[Any], alice: Account
) -> None:
    """KServe v2 REST: 200 means ready, 4xx not ready (tritonclient reads only the code)."""
    h = {"X-API-Key": alice.key}
    content, _ = dense_onnx()
    for name in ("dense", "broken"):
        uploaded = client.post(
            "/api/v1/models/upload",
            files={"model": (f"{name}.onnx", content, "application/octet-stream")},
            data={"name": name},
            headers=h,
        )
        assert uploaded.status_code == 201, uploaded.text
    ready = client.get("/v2/models/dense/ready", headers=h)
    assert (ready.status_code, ready.json()["ready"]) == (200, True)
    with client.app.state.container.db.transaction() as tx:  # a model that is not ready
        tx.execute("UPDATE models SET status = 'failed' WHERE name = 'broken'")
    for path in ("/v2/models/broken/ready", "/v2/models/broken/versions/1/ready"):
        not_ready = client.get(path, headers=h)
        assert not_ready.status_code == 400, path
        assert not_ready.json() == {"name": "broken", "ready": False}
    assert client.get("/v2/models/ghost/ready", headers=h).status_code == 404
