"""Request bodies: strict msgspec structs (unknown fields refused, lengths bounded, no card
numbers in their text)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from domain.errors import InvalidArgumentError
from domain.money import usd_to_micros
from domain.pan import refuse_pan

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL; nobody means to send one
Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=NO_NUL)]
Password = Annotated[str, Meta(min_length=8, max_length=1024, pattern=NO_NUL)]
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Reason = Annotated[str, Meta(max_length=500, pattern=NO_NUL)]
RequiredReason = Annotated[str, Meta(min_length=1, max_length=500, pattern=NO_NUL)]
Window = Annotated[str, Meta(min_length=1, max_length=16, pattern=NO_NUL)]
UNCHECKED = frozenset({"password"})  # hashed, never stored as sent


def _refuse_pans(value: Any, field: str) -> None:
    if isinstance(value, str):
        refuse_pan(value, field)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_pans(key, field)
            _refuse_pans(item, field)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_pans(item, field)


class Body(Struct, forbid_unknown_fields=True):
    """A request body none of whose text fields (nor the text in their dicts and lists)
    holds a card number: such a body is a 400 naming the field (``domain.pan``)."""

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if name not in UNCHECKED:
                _refuse_pans(getattr(self, name), name)


class RegisterBody(Body):
    email: Email
    password: Password
    name: Name


class LoginBody(Body):
    email: Email
    password: Annotated[str, Meta(min_length=1, max_length=1024, pattern=NO_NUL)]


class ApiKeyBody(Body):
    name: Annotated[str, Meta(min_length=1, max_length=100, pattern=NO_NUL)]
    expires_at: datetime | None = None
    # re-entered to make a key that outlives the login session (any expiry, or none)
    password: Annotated[str, Meta(min_length=1, max_length=1024, pattern=NO_NUL)] | None = None


class SpendCheckBody(Body):
    estimated_cost: Decimal


class GrantBody(Body):
    amount: Decimal
    reason: Reason = "admin grant"


class LimitsBody(Body):
    limits: dict[Window, Decimal | None]
    reason: Reason = ""


class ResetBody(Body):
    reason: RequiredReason
    window: Window | None = None


class CapBody(Body):
    cap: Decimal
    reason: Reason = ""


class RoleBody(Body):
    is_admin: bool


class RentBody(Body):
    image: Annotated[str, Meta(min_length=1, max_length=300, pattern=NO_NUL)] = (
        "nvidia/cuda:12.4.1-base-ubuntu22.04"
    )
    env: dict[
        Annotated[str, Meta(max_length=100, pattern=NO_NUL)],
        Annotated[str, Meta(max_length=2000, pattern=NO_NUL)],
    ] = msgspec.field(default_factory=dict)
    ports: Annotated[list[Annotated[int, Meta(ge=1, le=65535)]], Meta(max_length=16)] = (
        msgspec.field(default_factory=lambda: [8000])
    )
    disk_gb: Annotated[int, Meta(ge=1, le=4096)] = 20
    onstart: Annotated[str, Meta(max_length=4000, pattern=NO_NUL)] = ""


class ReserveBody(Body):
    count: Annotated[int, Meta(ge=1, le=16)]
    provider: Annotated[str, Meta(max_length=32, pattern=NO_NUL)] = "all"
    min_vram: Annotated[float, Meta(ge=0, le=10_000)] | None = None
    max_price: Annotated[str, Meta(max_length=32, pattern=NO_NUL)] | None = None
    gpu_model: Annotated[str, Meta(max_length=64, pattern=NO_NUL)] | None = None
    region: Annotated[str, Meta(max_length=64, pattern=NO_NUL)] | None = None
    num_gpus: Annotated[int, Meta(ge=1, le=64)] | None = None
    image: Annotated[str, Meta(min_length=1, max_length=300, pattern=NO_NUL)] = (
        "nvidia/cuda:12.4.1-base-ubuntu22.04"
    )


def positive_usd(value: Any, field: str) -> int:
    micros = usd_to_micros(value, field=field)
    if micros <= 0:
        raise InvalidArgumentError(f"{field} must be greater than zero", field=field)
    return micros
