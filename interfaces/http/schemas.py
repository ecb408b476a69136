"""Request bodies: strict msgspec structs (unknown fields refused, lengths bounded)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

from msgspec import Meta, Struct

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL; nobody means to send one
Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=NO_NUL)]
Password = Annotated[str, Meta(min_length=8, max_length=1024, pattern=NO_NUL)]
Name = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
Reason = Annotated[str, Meta(max_length=500, pattern=NO_NUL)]
RequiredReason = Annotated[str, Meta(min_length=1, max_length=500, pattern=NO_NUL)]
Window = Annotated[str, Meta(min_length=1, max_length=16, pattern=NO_NUL)]


class RegisterBody(Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: Name


class LoginBody(Struct, forbid_unknown_fields=True):
    email: Email
    password: Annotated[str, Meta(min_length=1, max_length=1024, pattern=NO_NUL)]


class ApiKeyBody(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=100, pattern=NO_NUL)]
    expires_at: datetime | None = None
    # re-entered to make a key that outlives the login session (any expiry, or none)
    password: Annotated[str, Meta(min_length=1, max_length=1024, pattern=NO_NUL)] | None = None


class SpendCheckBody(Struct, forbid_unknown_fields=True):
    estimated_cost: Decimal


class GrantBody(Struct, forbid_unknown_fields=True):
    amount: Decimal
    reason: Reason = "admin grant"


class LimitsBody(Struct, forbid_unknown_fields=True):
    limits: dict[Window, Decimal | None]
    reason: Reason = ""


class ResetBody(Struct, forbid_unknown_fields=True):
    reason: RequiredReason
    window: Window | None = None


class CapBody(Struct, forbid_unknown_fields=True):
    cap: Decimal
    reason: Reason = ""


class RoleBody(Struct, forbid_unknown_fields=True):
    is_admin: bool
