"""Swagger UI and Redoc for ``/schema/swagger`` and ``/schema/redoc``, served by this app.

The dist files are vendored in ``interfaces/web/docs_assets/`` (Swagger UI 5.x, Apache-2.0;
Redoc 2.x, MIT; licences beside them), copied from the ``drf-spectacular-sidecar`` release
2026.10.1 (which we do not depend on: it pulls in Django). They ship inside the wheel and are
read through ``importlib.resources``, so the pages load no script, style, font or icon from
another origin and work offline.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import CacheControlHeader, ETag
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.params import FromPath
from litestar.response import File

from interfaces.http.conditional import Validators, not_modified, not_modified_response

ASSETS_PATH = "/schema/assets"
JS, CSS = "text/javascript", "text/css"
FILES = {  # served name: media type
    "swagger-ui-bundle.js": JS,
    "swagger-ui-standalone-preset.js": JS,
    "swagger-ui.css": CSS,
    "redoc.standalone.js": JS,
}
HEADERS = {"X-Content-Type-Options": "nosniff", "Cross-Origin-Resource-Policy": "same-origin"}


def _static_root() -> Path:
    with as_file(files("interfaces.web") / "docs_assets") as root:  # a real folder in the wheel
        return root


ROOT = _static_root()


def render_plugins() -> list[SwaggerRenderPlugin | RedocRenderPlugin]:
    """The two UIs, pointed at our own copies (no CDN, no Google Fonts, no remote favicon)."""
    return [
        SwaggerRenderPlugin(
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
            favicon="",
        ),
        RedocRenderPlugin(
            path="/redoc",
            js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            google_fonts=False,
            favicon="",
        ),
    ]


@get(
    f"{ASSETS_PATH}/{{name:str}}",
    include_in_schema=False,
    cache_control=CacheControlHeader(public=True, max_age=86400),
)
async def docs_asset(
    request: Request[Any, Any, Any], name: FromPath[str]
) -> File | Response[bytes]:
    found = FILES.get(name)
    if found is None:
        raise NotFoundException(f"no documentation asset {name!r}")
    validators = validators_of(name)
    if not_modified(request.headers, validators):
        return not_modified_response(validators, HEADERS)  # Cache-Control: the route's
    return File(
        ROOT / name,
        media_type=found,
        content_disposition_type="inline",
        headers={**HEADERS, **validators.headers()},
        etag=ETag(value=validators.etag.strip('"')),
    )


@cache
def validators_of(name: str) -> Validators:
    """A strong ETag (content hash) and the file's time, read once per asset."""
    path = ROOT / name
    return Validators.of(path.read_bytes(), path.stat().st_mtime)
