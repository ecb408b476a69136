"""What the protocol translators share: the caller, message parsing helpers, reply stamps."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from domain.errors import DomainError
from interfaces.agents.actions import execute, problem_of
from interfaces.agents.base import Result

if TYPE_CHECKING:
    from infrastructure.identity.auth import Principal
    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

AGENT_NAME = "aiserve-gpuproxy"
ONTOLOGY = "gpu-proxy"
_DECODER = msgspec.json.Decoder()


class MalformedMessageError(DomainError):
    """The message is not valid JSON or lacks what its protocol requires."""

    status = 400
    title = "Malformed message"


class NoAnswerError(DomainError):
    """The question is understood, but nothing answers it (no offer, no item)."""

    status = 404
    title = "No answer"


@dataclass(frozen=True)
class Caller:
    """An authenticated request's view of the services: runs registry actions as the user."""

    container: Container
    runtime: ProxyRuntime
    principal: Principal

    async def run(self, name: Any, args: Any, *, read_only: bool = False) -> Result:
        if args is not None and not isinstance(args, Mapping):
            raise MalformedMessageError("parameters must be a JSON object", field="parameters")
        return await execute(
            self.container, self.runtime, self.principal, name, args, read_only=read_only
        )


@dataclass(frozen=True)
class Unparsed:
    """A body that is not JSON; ``need_object`` raises its error in the protocol's reply."""

    error: MalformedMessageError


def decode(body: bytes) -> Any:
    """The body as JSON, or ``Unparsed`` saying why it is not."""
    if not body.strip():
        return Unparsed(MalformedMessageError("the request body is empty; send a JSON message"))
    try:
        return _DECODER.decode(body)
    except msgspec.DecodeError as exc:
        return Unparsed(MalformedMessageError(f"the request body is not valid JSON: {exc}"))


def need_object(message: Any, what: str = "message") -> dict[str, Any]:
    if isinstance(message, Unparsed):
        raise message.error
    if not isinstance(message, dict):
        raise MalformedMessageError(f"the {what} must be a JSON object")
    return message


def content_of(message: Mapping[str, Any], key: str = "content") -> dict[str, Any]:
    """A message's content: a JSON object, or a string holding one (FIPA/KQML style)."""
    content = message.get(key)
    if isinstance(content, str):
        try:
            content = _DECODER.decode(content.encode())
        except msgspec.DecodeError:
            raise MalformedMessageError(f"{key} must be a JSON object (or JSON text)") from None
    if content is None:
        return {}
    return need_object(content, key)


def text(message: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = message.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise MalformedMessageError(f"{key} must be a non-empty string", field=key)
    return value


def echo(fields: Any, key: str) -> str | None:
    """A string field of the request to repeat in the reply (bounded), else None."""
    value = fields.get(key) if isinstance(fields, Mapping) else None
    return value[:200] if isinstance(value, str) else None


def failure(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and REST problem body for an error, with ``code``: the error's own
    name (``Insufficient credits`` → ``INSUFFICIENT_CREDITS``), since the problem's ``title``
    is the status phrase (RFC 9457 §4.2.1) that many errors share."""
    problem = problem_of(exc)
    if isinstance(exc, DomainError):
        problem["code"] = _code(exc.title)
    return int(problem["status"]), problem


def refusal(problem: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    """An error reply that is the protocol's message and an RFC 9457 problem at once.

    The problem's fields (``type``, ``title``, ``status``, ``detail``, ``error``, details) are
    laid over the protocol's own fields, which never use those names for anything else.
    """
    return {**reply, **problem}


def error_code(problem: Mapping[str, Any]) -> str:
    """The error's ``code`` (``failure``), else one made of the title."""
    return str(problem.get("code") or _code(str(problem.get("title", "error"))))


def _code(words: str) -> str:
    """``Insufficient credits`` → ``INSUFFICIENT_CREDITS``."""
    return re.sub(r"[^A-Z0-9]+", "_", words.upper()).strip("_")


def new_id() -> str:
    return str(uuid.uuid4())


def now() -> str:
    return datetime.now(UTC).isoformat()
