"""Swagger UI and Redoc for ``/schema/swagger`` and ``/schema/redoc``, served by this app.

The dist files come from the ``drf-spectacular-sidecar`` package (Swagger UI and Redoc
builds, refreshed upstream monthly); only its static folder is read, the package itself (which
imports Django) is never imported. The pages therefore load no script, style, font or icon
from another origin and work offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from litestar import get
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import RedocRenderPlugin, SwaggerRenderPlugin
from litestar.params import FromPath
from litestar.response import File

ASSETS_PATH = "/schema/assets"
JS, CSS = "text/javascript", "text/css"
FILES = {  # served name: (path under the package's static folder, media type)
    "swagger-ui-bundle.js": ("swagger-ui-dist/swagger-ui-bundle.js", JS),
    "swagger-ui-standalone-preset.js": ("swagger-ui-dist/swagger-ui-standalone-preset.js", JS),
    "swagger-ui.css": ("swagger-ui-dist/swagger-ui.css", CSS),
    "redoc.standalone.js": ("redoc/bundles/redoc.standalone.js", JS),
}
HEADERS = {"X-Content-Type-Options": "nosniff", "Cross-Origin-Resource-Policy": "same-origin"}


def _static_root() -> Path:
    spec = importlib.util.find_spec("drf_spectacular_sidecar")  # finds it without running it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("drf-spectacular-sidecar is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "drf_spectacular_sidecar"


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
async def docs_asset(name: FromPath[str]) -> File:
    found = FILES.get(name)
    if found is None:
        raise NotFoundException(f"no documentation asset {name!r}")
    relative, media_type = found
    return File(
        ROOT / relative, media_type=media_type, content_disposition_type="inline", headers=HEADERS
    )
