"""A compact text form of an account's spend buckets for its snapshots (docs/adr/0033, 0036).

A busy account keeps one bucket per minute of the last 72 h: 4,320 of them, ~80 KB as JSON
pairs. Packed, the same buckets are one short string: minutes as deltas and amounts as
little-endian int64, deflated, base64. The account holds them as two columns (``minutes``,
``amounts``: docs/adr/0036), so unpacking is a few C-level passes and builds no pairs.
"""

from __future__ import annotations

import base64
import sys
import zlib
from array import array
from collections.abc import Sequence
from itertools import accumulate
from operator import sub

PREFIX = "z1:"  # format marker: a later format gets another prefix

Columns = tuple[list[int], list[int]]  # (minutes, amounts), minutes strictly increasing


def pack(minutes: Sequence[int], amounts: Sequence[int]) -> str | list[list[int]]:
    """The two columns (sorted by minute) as one string; ``[minute, micros]`` pairs if they
    do not fit int64 (then the snapshot keeps the plain list, which ``unpack`` also reads)."""
    deltas = list(map(sub, minutes, [0, *minutes]))
    try:
        packed = array("q", [len(minutes), *deltas, *amounts])
    except OverflowError:
        return [[int(m), int(a)] for m, a in zip(minutes, amounts, strict=True)]
    if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
        packed.byteswap()
    return PREFIX + base64.b64encode(zlib.compress(packed.tobytes(), 1)).decode("ascii")


def unpack(stored: str | Sequence[Sequence[int]]) -> Columns:
    """The columns from ``pack``'s string, or from ``[minute, micros]`` pairs (snapshots
    stored before ADR 0033, and values past int64)."""
    if not isinstance(stored, str):
        return [int(b[0]) for b in stored], [int(b[1]) for b in stored]
    if not stored.startswith(PREFIX):
        raise ValueError("unknown spend bucket format")
    values = array("q")
    values.frombytes(zlib.decompress(base64.b64decode(stored[len(PREFIX) :])))
    if sys.byteorder != "little":  # pragma: no cover
        values.byteswap()
    count = values[0]
    return list(accumulate(values[1 : 1 + count])), values[1 + count :].tolist()
