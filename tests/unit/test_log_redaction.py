"""The log filter: every credential shape is redacted, records stay usable, passes repeat safely."""

from __future__ import annotations

import io
import logging

import pytest
from uvicorn.logging import AccessFormatter

from infrastructure.log_redaction import REDACTED, RedactingFilter, install, redact

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLXBhcnQtaGVyZQ"
KEY = "gpx_0123456789abcdef_" + "Zz9-_" * 8


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        (f"GET /ws?token={JWT} HTTP/1.1", JWT),
        (f"/api?x=1&api_key={KEY}&y=2", KEY),
        ("/v1/things?key=s3cr3tvalue", "s3cr3tvalue"),
        ("< Authorization: Basic Zm9vOmJhcg==", "Zm9vOmJhcg=="),
        ("< authorization: Bearer opaque-token-123", "opaque-token-123"),
        ("< X-API-Key: some-key-value", "some-key-value"),
        ("< sec-websocket-protocol: bearer, opaque-token-123", "opaque-token-123"),
        (f"{{'x-api-key': '{KEY}', 'host': 'a'}}", KEY),
        (f"Decoded (b'authorization', b'Bearer {JWT}')", JWT),
        (f"a JWT {JWT} in prose", JWT),
        (f"a key {KEY}.", KEY),
        ("login password=hunter2hunter2", "hunter2hunter2"),
    ],
)
def test_every_credential_shape_is_redacted(line: str, secret: str) -> None:
    clean = redact(line)
    assert secret not in clean
    assert REDACTED in clean
    assert redact(clean) == clean  # a second filter on the way changes nothing


def test_lines_without_credentials_are_untouched() -> None:
    for line in ['127.0.0.1:5 - "GET /api/v1/billing/credits HTTP/1.1" 200', "ledger on sqlite"]:
        assert redact(line) == line


def _record(msg: str, args: tuple[object, ...], **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_uvicorn_access_records_keep_their_argument_tuple() -> None:
    """uvicorn's AccessFormatter unpacks ``args``: the filter must keep its shape."""
    record = _record(
        '%s - "%s %s HTTP/%s" %d', ("127.0.0.1:1", "GET", f"/x?token={JWT}", "1.1", 401)
    )
    assert RedactingFilter().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert JWT not in line
    assert "/x?token=[REDACTED]" in line


def test_secrets_in_non_string_arguments_and_tracebacks() -> None:
    record = _record("Decoded %s, consumed %d", ((b"x-api-key", KEY.encode()), 9))
    try:
        raise ValueError(f"bad header Authorization: Bearer {JWT}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert KEY not in text
    assert JWT not in text
    assert "ValueError" in text


def test_install_covers_records_from_any_logger() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    install([handler], loggers=())
    child = logging.getLogger("some.library.deep.down")
    child.addHandler(handler)
    child.propagate = False
    try:
        child.warning("calling %s with %s", "https://api.example/v1", {"Authorization": JWT})
    finally:
        child.removeHandler(handler)
        child.propagate = True
    assert JWT not in stream.getvalue()
    assert "https://api.example/v1" in stream.getvalue()
