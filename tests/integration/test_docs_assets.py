"""``/schema/swagger`` and ``/schema/redoc`` load every asset from this server (no CDN)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from infrastructure.settings import load_settings
from tests.support.http import JWT_SECRET, test_client

REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']*)["']""")
MARKERS = {  # something each bundle is known to define
    "swagger-ui-bundle.js": b"SwaggerUIBundle",
    "swagger-ui-standalone-preset.js": b"SwaggerUIStandalonePreset",
    "swagger-ui.css": b".swagger-ui",
    "redoc.standalone.js": b"Redoc",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    data: Path = tmp_path_factory.mktemp("docs")
    settings = load_settings({"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET}, env_file=None)
    with test_client(settings) as c:
        yield c


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (
            "/schema/swagger",
            {"swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"},
        ),
        ("/schema/redoc", {"redoc.standalone.js"}),
    ],
)
def test_pages_reference_only_same_origin_assets_that_answer(
    client: TestClient[Any], page: str, expected: set[str]
) -> None:
    html = client.get(page)
    assert html.status_code == 200
    head = html.text.split("<body", 1)[0]
    references = REFERENCE.findall(html.text)
    assert references, "the page loads its assets through src/href"
    for url in references:
        assert url.startswith("/"), url  # same origin: a path on this server
        assert not url.startswith("//"), url
    assert "://" not in head  # no CDN, no Google Fonts, no remote favicon
    assert {url.rsplit("/", 1)[1] for url in references} == expected
    for url in references:
        asset = client.get(url)
        assert asset.status_code == 200, url
        name = url.rsplit("/", 1)[1]
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        assert asset.headers["content-type"].startswith(kind)
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert MARKERS[name] in asset.content
        assert len(asset.content) > 100_000  # the real bundle, not a placeholder


@pytest.mark.parametrize(
    "path", ["/schema/assets/nope.js", "/schema/assets/..%2Fpyproject.toml", "/schema/assets/"]
)
def test_only_the_known_assets_are_served(client: TestClient[Any], path: str) -> None:
    assert client.get(path).status_code == 404
