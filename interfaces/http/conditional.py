"""Validators and conditional GETs for static files (RFC 9110 §8.8, §13.1.2, §13.1.3, §15.4.5).

A strong ``ETag`` is a hash of the bytes (the same on every replica serving the same release);
``Last-Modified`` is the file's modification time. ``If-None-Match`` (weak comparison, ``*``
and lists included) wins over ``If-Modified-Since``, which is only looked at without it; a
match answers ``304 Not Modified`` with the validators and caching headers and no body.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

from litestar import Response


@dataclass(frozen=True)
class Validators:
    etag: str  # quoted, strong: '"<sha256 hex, 32 chars>"'
    modified: int | None  # epoch seconds, whole (HTTP dates have no fractions)

    @classmethod
    def of(cls, body: bytes, modified: float | None) -> Validators:
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(f'"{digest}"', None if modified is None else int(modified))

    def headers(self) -> dict[str, str]:
        found = {"ETag": self.etag}
        if self.modified is not None:
            found["Last-Modified"] = formatdate(self.modified, usegmt=True)
        return found


def _opaque(tag: str) -> str:
    """The opaque part of an entity tag (weak comparison ignores ``W/``)."""
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def _matches(if_none_match: str, etag: str) -> bool:
    wanted = _opaque(etag)
    return any(
        candidate.strip() == "*" or _opaque(candidate) == wanted
        for candidate in if_none_match.split(",")
    )


def _not_modified_since(if_modified_since: str, modified: int | None) -> bool:
    if modified is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return False  # an invalid date is ignored (RFC 9110 §13.1.3)
    if since.tzinfo is None:
        return False
    return modified <= since.timestamp()


def not_modified(request_headers: Mapping[str, str], validators: Validators) -> bool:
    """Whether a GET/HEAD with these headers gets ``304`` (``If-None-Match`` first)."""
    if_none_match = request_headers.get("if-none-match")
    if if_none_match is not None:
        return _matches(if_none_match, validators.etag)
    if_modified_since = request_headers.get("if-modified-since")
    if if_modified_since is not None:
        return _not_modified_since(if_modified_since, validators.modified)
    return False


def not_modified_response(validators: Validators, headers: Mapping[str, str]) -> Response[bytes]:
    """``304``: the validators and the caching headers a ``200`` would carry, no body."""
    return Response(b"", status_code=304, headers={**headers, **validators.headers()})
