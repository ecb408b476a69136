"""What an agent action is: a name, a JSON Schema built from a msgspec struct, a handler.

Arguments are converted with ``msgspec.convert`` into the action's struct (unknown fields
refused, the REST bodies' own constraints inherited), so every protocol validates the same
way. Money arguments may be JSON numbers or decimal strings; both become exact decimals and
non-finite values are refused before any service sees them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec

from domain.errors import DomainError, InvalidAmountError, InvalidArgumentError
from domain.money import usd_to_micros

if TYPE_CHECKING:
    from infrastructure.identity.auth import Principal
    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

Result = dict[str, Any]
Handler = Callable[["Container", "ProxyRuntime", "Principal", Any], Awaitable[Result]]


class UnknownActionError(DomainError):
    """No action by this name (or alias)."""

    status = 400
    title = "Unknown action"


class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    """Arguments of an action that takes none."""


@dataclass(frozen=True)
class Action:
    """One operation every agent door offers; ``handler(container, runtime, principal, args)``."""

    name: str
    description: str
    args: type[msgspec.Struct]
    handler: Handler
    read_only: bool = False
    destructive: bool = False
    aliases: tuple[str, ...] = ()
    money: tuple[str, ...] = ()  # arguments that are USD amounts
    items: str | None = None  # the list in the result, for "ask-one"-style queries
    hints: Mapping[str, str] = field(default_factory=dict)  # argument descriptions

    def parse(self, raw: Mapping[str, Any] | None) -> Any:
        """Validate ``raw`` into the action's struct, or raise a 400 naming the field."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise InvalidArgumentError(f"{self.name}: arguments must be a JSON object")
        values = dict(raw)
        for name in self.money:
            if name in values:
                values[name] = usd_text(values[name], name)
        try:
            return msgspec.convert(values, self.args, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidArgumentError(
                f"Invalid arguments for {self.name}: {exc}", **_field_of(str(exc))
            ) from None

    def schema(self) -> dict[str, Any]:
        """The JSON Schema (draft 2020-12) of the arguments, self-contained."""
        generated = msgspec.json.schema(self.args)
        body: dict[str, Any] = dict(generated["$defs"][self.args.__name__])
        body.pop("title", None)
        body.pop("description", None)
        properties: dict[str, Any] = {k: dict(v) for k, v in body.get("properties", {}).items()}
        required = set(body.get("required", []))
        for name in self.money:
            if name in properties:
                money: dict[str, Any] = {"type": ["string", "number"]}
                if name not in required:
                    money = {"type": ["string", "number", "null"], "default": None}
                properties[name] = money
        for name, text in self.hints.items():
            properties.setdefault(name, {})["description"] = text
        body["properties"] = properties
        body["type"] = "object"
        return body


def usd_text(value: Any, name: str) -> Any:
    """A JSON number as an exact decimal string; NaN/Infinity refused; other types untouched."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidAmountError(name, "must be finite")
        return repr(value)
    if isinstance(value, int | Decimal):
        return str(value)
    return value


def usd_filter(value: str | None, name: str) -> int | None:
    """An optional USD filter (e.g. ``max_price``) in micro-USD; negative values refused."""
    if value is None:
        return None
    micros = usd_to_micros(value, field=name)
    if micros < 0:
        raise InvalidAmountError(name, "must not be negative")
    return micros


def _field_of(message: str) -> dict[str, str]:
    """The argument a msgspec validation message names (``at `$.count```, ``field `x```)."""
    found = re.search(r"at `\$\.([^`\[]+)", message) or re.search(r"field `([^`]+)`", message)
    return {"field": found.group(1)} if found else {}
