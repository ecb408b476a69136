"""A compact text form of an account's spend buckets for its snapshots (docs/adr/0033).

A busy account keeps one ``[minute, micros]`` bucket per minute of the last 72 h: 4,320 pairs,
~80 KB of JSON that every load of its snapshot (a charge's cache miss, ``balance --at``)
decodes pair by pair. Packed, the same buckets are one short string: minutes as deltas and
amounts as little-endian int64, deflated, base64. Unpacking is a few C-level passes.
"""

from __future__ import annotations

import base64
import sys
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate
from operator import itemgetter, sub

PREFIX = "z1:"  # format marker: a later format gets another prefix
_INT64 = (-(2**63), 2**63 - 1)


def pack(buckets: Sequence[Sequence[int]]) -> str | list[list[int]]:
    """``buckets`` (sorted by minute) as one string; a copy of the list if they do not fit
    int64 (then the snapshot keeps the plain list, which ``unpack`` also reads)."""
    minutes = list(map(itemgetter(0), buckets))
    amounts = list(map(itemgetter(1), buckets))
    deltas = list(map(sub, minutes, [0, *minutes]))
    try:
        packed = array("q", [len(buckets), *deltas, *amounts])
    except OverflowError:
        return [[int(m), int(a)] for m, a in buckets]
    if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
        packed.byteswap()
    return PREFIX + base64.b64encode(zlib.compress(packed.tobytes(), 1)).decode("ascii")


def unpack(stored: str | Sequence[Sequence[int]]) -> list[list[int]]:
    """The bucket list from ``pack``'s string (or from a plain list, as stored before)."""
    if not isinstance(stored, str):
        return [[int(m), int(a)] for m, a in stored]
    if not stored.startswith(PREFIX):
        raise ValueError("unknown spend bucket format")
    values = array("q")
    values.frombytes(zlib.decompress(base64.b64decode(stored[len(PREFIX) :])))
    if sys.byteorder != "little":  # pragma: no cover
        values.byteswap()
    count = values[0]
    minutes = accumulate(values[1 : 1 + count])
    return list(map(list, zip(minutes, values[1 + count :], strict=True)))
