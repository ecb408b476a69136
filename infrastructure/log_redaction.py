"""A logging filter that keeps credentials out of every log line, whoever logs them.

Defence in depth: our own code never logs a credential, but libraries do (uvicorn logs the
WebSocket path with its query; the ``websockets`` protocol logs request headers at debug
level; httpx logs request URLs). The filter rewrites each record's message and arguments,
and pre-renders an exception's traceback, replacing secrets with ``[REDACTED]``:
``token=``/``api_key=``/``key=``-style query values, ``Authorization``/``X-API-Key``/
``Cookie``/``Sec-WebSocket-Protocol`` header values, ``Bearer``/``Basic`` credentials, JWTs and
``gpx_`` API keys.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"
_VALUE = r"(?!\[REDACTED\])[^\s&\"',;)}\]]+"  # idempotent: a second pass changes nothing
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # header lines / dict items: "Authorization: Bearer x", "'x-api-key': 'gpx_…'"
    (
        re.compile(
            r"(?i)\b((?:proxy-)?authorization|x-api-key|cookie|set-cookie|sec-websocket-protocol)"
            r"(['\"]?\s*[:=]\s*['\"]?)([^\r\n'\"]+)"
        ),
        rf"\1\2{REDACTED}",
    ),
    # query strings and key=value pairs
    (
        re.compile(
            r"(?i)\b((?:access_|refresh_|id_)?token|api[_-]?key|key|password|secret|"
            r"client_secret|signature|sig)=" + _VALUE
        ),
        rf"\1={REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer|basic)(\s+|,\s*)[A-Za-z0-9._~+/=-]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*)?"), REDACTED),
    (re.compile(r"\bgpx_[A-Za-z0-9_-]+"), REDACTED),
)


def redact(text: str) -> str:
    """``text`` with every credential it holds replaced by ``[REDACTED]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites records in place; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            # keep the tuple's shape: some formatters (uvicorn's access log) unpack it
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message:  # a secret inside a non-string argument: flatten the record
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


REDACTING = RedactingFilter()
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "grpclib", "mcp")


def install(handlers: Iterable[logging.Handler], loggers: Iterable[str] = LOGGERS) -> None:
    """Put the filter on ``handlers`` (sees every record they emit, from any logger) and on
    the named loggers (records logged straight to them, even without our handlers)."""
    for target in [*handlers, *(logging.getLogger(name) for name in loggers)]:
        if REDACTING not in target.filters:
            target.addFilter(REDACTING)
