"""Email addresses as account names: one normal form, and look-alikes told apart.

``normalise_email``: NFKC, lower case, the domain through IDNA (UTS #46) and back to Unicode,
so a fullwidth ``alice@EXAMPLE.com`` and ``alice@example.com`` are one account.
``refuse_mixed_script``: a local part or domain label that mixes scripts (Latin letters with a
Cyrillic ``a``) is refused.
``skeleton``: the Unicode TS #39 skeleton (each character mapped to its confusable
prototype), so accounts that merely look alike can be refused. The confusable and script
data are Unicode's, as shipped by ``confusable-homoglyphs``.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache

import idna
from confusable_homoglyphs import categories, confusables

from domain.errors import InvalidArgumentError

EMAIL = re.compile(r"^[^@\s\x00]{1,64}@[^@\s\x00]{1,190}\.[^@\s.\x00]{2,63}$")
_NEUTRAL = {"COMMON", "INHERITED"}
# Scripts written together (UTS #39 "highly restrictive"): Japanese, Chinese, Korean.
_TOGETHER = (
    {"HAN", "HIRAGANA", "KATAKANA"},
    {"HAN", "BOPOMOFO"},
    {"HAN", "HANGUL"},
)
_BIDI_MARKS = str.maketrans("", "", "\u200e\u200f")


class MixedScriptEmailError(InvalidArgumentError):
    """An address that mixes scripts: refused outright (400), it can only be a look-alike."""

    status = 400
    title = "Mixed-script email"


def _invalid(email: str, why: str = "is not a valid email address") -> InvalidArgumentError:
    return InvalidArgumentError(f"{email[:254]!r} {why}", field="email")


def normalise_email(email: str) -> str:
    """The one stored form of an address; 400 naming ``email`` if it is not one."""
    value = unicodedata.normalize("NFKC", email.strip()).lower()
    if not EMAIL.match(value):
        raise _invalid(email)
    local, _, domain = value.rpartition("@")
    try:
        domain = idna.decode(idna.encode(domain, uts46=True))
    except (idna.IDNAError, UnicodeError):
        raise _invalid(email, "has an invalid domain name") from None
    value = f"{local}@{domain}"
    if not EMAIL.match(value):
        raise _invalid(email)
    return value


def legacy_form(email: str) -> str:
    """How addresses were stored before ``normalise_email`` (accounts made then keep it)."""
    return email.strip().lower()


def refuse_mixed_script(email: str) -> None:
    """400 naming ``email`` if its local part or a domain label mixes scripts."""
    local, _, domain = email.rpartition("@")
    for part in (local, *domain.split(".")):
        scripts = {categories.alias(ch) for ch in part} - _NEUTRAL
        if len(scripts) > 1 and not any(scripts <= ok for ok in _TOGETHER):
            names = ", ".join(sorted(scripts)).lower()
            raise MixedScriptEmailError(f"{email[:254]!r} mixes scripts ({names})", field="email")


def skeleton(email: str) -> str:
    """The UTS #39 skeleton: equal for addresses that look alike."""
    mapping = _prototypes()
    text = unicodedata.normalize("NFD", email)
    return unicodedata.normalize("NFD", "".join(mapping.get(ch, ch) for ch in text))


@cache
def _prototypes() -> dict[str, str]:
    """Each confusable character -> one representative of its class.

    The library keeps Unicode's source -> prototype pairs in both directions, so each class
    (a prototype and its sources) is found as a connected group and named by one member;
    a source whose prototype is a sequence (``m`` -> ``rn``) maps to that sequence's names.
    """
    parent: dict[str, str] = {}

    def root(ch: str) -> str:
        while parent.get(ch, ch) != ch:
            ch = parent[ch]
        return ch

    sequences: dict[str, str] = {}
    for key, entries in confusables.confusables_data.items():
        source = key.translate(_BIDI_MARKS)
        if len(source) != 1:
            continue
        for entry in entries:
            other = str(entry["c"]).translate(_BIDI_MARKS)
            if len(other) == 1:
                a, b = root(source), root(other)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the lower code point names the class
            elif other:
                sequences[source] = other
    mapping = {ch: root(ch) for ch in parent}
    for source, sequence in sequences.items():
        mapping[source] = "".join(root(ch) for ch in sequence)
    return mapping
