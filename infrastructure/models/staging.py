"""Receive a multipart upload chunk by chunk: the file part to a staging file, fields kept.

The body is parsed as it arrives (``multipart.PushMultipartParser``, the parser Litestar
itself uses) and never held whole in memory: file bytes are buffered up to ``FLUSH_BYTES``
and written from a worker thread. Limits are checked as bytes arrive, so an over-size file
is refused at the first byte past its limit, not after the whole body was read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from multipart import (
    MultipartSegment,
    ParserError,
    ParserLimitReached,
    PushMultipartParser,
)

from domain.models import UploadFormError

FLUSH_BYTES = 1 << 20
MAX_FIELD_BYTES = 4096
MAX_PARTS = 16
FILE_FIELD = "model"


@dataclass
class Received:
    filename: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


class _Receiver:
    """Parser events to a staging file and a dict of small fields."""

    def __init__(
        self,
        dest: Path,
        max_file_bytes: int,
        too_large: Callable[[int], Awaitable[Exception]],
        on_filename: Callable[[str, dict[str, str]], None],
    ) -> None:
        self.dest = dest
        self.max_file_bytes = max_file_bytes
        self.too_large = too_large
        self.on_filename = on_filename
        self.got = Received()
        self.out: IO[bytes] | None = None
        self.buffer = bytearray()
        self.segment: MultipartSegment | None = None
        self.value = bytearray()

    @property
    def in_file(self) -> bool:
        return self.segment is not None and self.segment.name == FILE_FIELD

    async def start(self, segment: MultipartSegment) -> None:
        self.segment, self.value = segment, bytearray()
        if segment.name != FILE_FIELD:
            return
        if self.out is not None or not segment.filename:
            raise UploadFormError("send exactly one model file (field 'model')", field="model")
        self.got.filename = segment.filename
        self.on_filename(segment.filename, self.got.fields)
        self.out = await asyncio.to_thread(self.dest.open, "wb")

    async def data(self, chunk: bytes | bytearray) -> None:
        if self.in_file and self.out is not None:
            self.got.size += len(chunk)
            if self.got.size > self.max_file_bytes:
                raise await self.too_large(self.got.size)
            self.buffer.extend(chunk)
            if len(self.buffer) >= FLUSH_BYTES:
                await self.flush()
            return
        self.value.extend(chunk)
        if len(self.value) > MAX_FIELD_BYTES:
            name = self.segment.name if self.segment else "?"
            raise UploadFormError(f"form field {name!r} is too long", field=name)

    def end(self) -> None:
        if self.segment is not None and not self.in_file:
            self.got.fields[self.segment.name] = self.value.decode("utf-8", "replace")
        self.segment = None

    async def flush(self) -> None:
        if self.out is not None and self.buffer:
            await asyncio.to_thread(self.out.write, bytes(self.buffer))
            self.buffer.clear()

    async def finish(self) -> Received:
        if self.out is None:
            raise UploadFormError("the form has no model file (field 'model')", field="model")
        await self.flush()
        await asyncio.to_thread(self.out.flush)
        return self.got

    def close(self) -> None:
        if self.out is not None:
            with contextlib.suppress(OSError):
                self.out.close()


async def receive_multipart(
    stream: AsyncIterator[bytes],
    boundary: str,
    dest: Path,
    *,
    max_file_bytes: int,
    too_large: Callable[[int], Awaitable[Exception]],
    on_filename: Callable[[str, dict[str, str]], None],
) -> Received:
    """Stream the ``model`` part to ``dest`` (at most ``max_file_bytes``), keep small fields.

    ``on_filename(filename, fields so far)`` may refuse the file as soon as its name is known;
    ``too_large(bytes seen)`` makes the error for a file past its limit.
    """
    receiver = _Receiver(dest, max_file_bytes, too_large, on_filename)
    try:
        with PushMultipartParser(
            boundary.encode(), max_segment_count=MAX_PARTS, max_header_size=4096
        ) as parser:
            async for chunk in _with_eof(stream):
                if parser.closed:  # past the closing boundary: an epilogue is ignored
                    continue
                for part in parser.parse(chunk):
                    if isinstance(part, MultipartSegment):
                        await receiver.start(part)
                    elif part is None:
                        receiver.end()
                    else:
                        await receiver.data(part)
        return await receiver.finish()
    except (ParserError, ParserLimitReached) as exc:
        raise UploadFormError(f"invalid multipart/form-data: {exc}", field="model") from None
    finally:
        receiver.close()


async def _with_eof(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in stream:
        if chunk:
            yield chunk
    yield b""  # tells the parser the body ended (an unfinished form is an error)
