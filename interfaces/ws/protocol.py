"""The ``/ws`` protocol: client messages (JSON text, tagged by ``type``) and close codes.

docs/adr/0014-streams-and-dashboard.md describes every message; ``decode`` turns a frame into
one of the structs below or raises ``BadMessageError`` with what is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

MAX_MESSAGE = 262_144  # bytes of one client frame
Ref = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]
Text = Annotated[str, Meta(max_length=4096, pattern=r"^[^\x00]*$")]

# close codes (4000-4999 are the application's)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL = 1011
CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_PING_TIMEOUT = 4408


class BadMessageError(ValueError):
    """A client frame that is not a valid message; answered with an error, never a close."""


class _Message(Struct, tag_field="type", forbid_unknown_fields=True):
    pass


class Subscribe(_Message, tag="subscribe"):
    """Start (or replace) the subscription; ``since`` resumes after that event id."""

    topics: Annotated[list[Annotated[str, Meta(max_length=32)]], Meta(max_length=16)] | None = None
    since: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None
    user_id: Annotated[str, Meta(max_length=64)] | None = None
    all: bool = False
    id: Ref | None = None


class Unsubscribe(_Message, tag="unsubscribe"):
    id: Ref | None = None


class Ping(_Message, tag="ping"):
    id: Ref | None = None


class Pong(_Message, tag="pong"):
    position: int | None = None
    id: Ref | None = None


class Infer(_Message, tag="infer"):
    """Stream one inference: to an instance, a hosted model, or balanced over your instances."""

    payload: Any | UnsetType = UNSET
    instance_id: Annotated[str, Meta(max_length=64, pattern=r"^[^\x00]*$")] | None = None
    model_id: Annotated[str, Meta(max_length=200, pattern=r"^[^\x00]*$")] | None = None
    protocol: Annotated[str, Meta(min_length=1, max_length=20)] = "http"
    method: Annotated[str, Meta(max_length=10)] = "POST"
    path: Text | None = None
    model: Annotated[str, Meta(max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")] | None = None
    headers: dict[
        Annotated[str, Meta(max_length=256, pattern=r"^[^\x00]*$")],
        Annotated[str, Meta(max_length=8192, pattern=r"^[^\x00]*$")],
    ] = {}
    timeout: Annotated[float, Meta(gt=0, le=86_400)] | None = None
    id: Ref | None = None


class Cancel(_Message, tag="cancel"):
    """Stop a running inference (by the ``id`` it was started with)."""

    id: Ref


Message = Subscribe | Unsubscribe | Ping | Pong | Infer | Cancel
_decoder = msgspec.json.Decoder(Message)


def decode(frame: str | bytes) -> Message:
    if len(frame) > MAX_MESSAGE:
        raise BadMessageError(f"message larger than {MAX_MESSAGE} bytes")
    try:
        message: Message = _decoder.decode(frame)
    except msgspec.ValidationError as exc:
        raise BadMessageError(str(exc)) from None
    except msgspec.DecodeError:
        raise BadMessageError("not a JSON object") from None
    return message


def reference(frame: str | bytes) -> str | None:
    """The ``id`` of a message that failed validation, if one can be found (for the reply)."""
    try:
        body = msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return None
    ref = body.get("id") if isinstance(body, dict) else None
    return ref[:64] if isinstance(ref, str) else None
