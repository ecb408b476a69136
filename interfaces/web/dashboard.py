"""Serves the admin dashboard: static HTML, CSS and JavaScript, no data.

The page itself is public (it holds nothing); every piece of data it shows comes from the
admin API with the admin's JWT, so a non-admin sees only "admins only". A strict Content
Security Policy allows scripts, styles and connections to this origin only.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import PurePath
from typing import Any

from litestar import Request, Response, Router, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from interfaces.http.conditional import Validators, not_modified, not_modified_response

STATIC = files("interfaces.web") / "static"  # package data (importlib.resources)
TYPES = {  # Litestar adds "; charset=utf-8" to text types
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    return {
        path.name: (path.read_bytes(), TYPES[PurePath(path.name).suffix])
        for path in sorted(STATIC.iterdir(), key=lambda p: p.name)
        if path.is_file() and PurePath(path.name).suffix in TYPES
    }


FILES = _load()


def _modified(name: str) -> float | None:
    stat = getattr(STATIC / name, "stat", None)  # a file on disk (not inside a zip)
    return stat().st_mtime if stat is not None else None


VALIDATORS = {name: Validators.of(body, _modified(name)) for name, (body, _) in FILES.items()}


def _file(name: str, request: Request[Any, Any, Any]) -> Response[bytes]:
    """The file, or ``304`` when the client's copy is current (``interfaces.http.conditional``)."""
    found = FILES.get(name)
    if found is None:
        raise NotFoundException(f"no dashboard file {name!r}")
    body, media_type = found
    validators = VALIDATORS[name]
    if not_modified(request.headers, validators):
        return not_modified_response(validators, HEADERS)
    return Response(body, media_type=media_type, headers={**HEADERS, **validators.headers()})


@get(["/", "/index.html"], summary="The admin dashboard", include_in_schema=False)
async def index(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _file("index.html", request)


@get("/static/{name:str}", summary="Dashboard assets", include_in_schema=False)
async def asset(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    return _file(name, request)


router = Router(path="/admin", tags=["dashboard"], route_handlers=[index, asset])
