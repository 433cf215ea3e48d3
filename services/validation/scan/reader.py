"""A bounded, chunked reader over a binary stream, for parsers that must never hold a whole file.

Reads through a 1 MiB buffer; long arguments are skipped (seeked past, or read and discarded in
chunks) rather than read. Truncation raises `Invalid`; parsers report it as a finding.
"""

from __future__ import annotations

import io
from typing import Protocol, cast

CHUNK = 1 << 20  # read size


class Stream(Protocol):
    """Bytes on demand: the artifact file, a codec, an archive member, or an adapter (streams.py)."""

    def read(self, n: int, /) -> bytes: ...


class SeekableStream(Stream, Protocol):
    """A stream that also seeks (the artifact file); used only where the caller says it seeks."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...

    def seekable(self) -> bool: ...


def as_seekable(stream: Stream) -> SeekableStream:
    """`stream` where the caller knows it seeks (else its missing methods raise AttributeError)."""
    return cast(SeekableStream, stream)  # a Protocol cannot be checked at run time without isinstance costs


class Invalid(Exception):
    """The bytes are not well-formed for the layout being parsed."""


class Limit(Exception):
    """The input is beyond what the scanner tracks (size, time, depth); reported as unsafe."""


class Reader:
    """Reads a binary stream through a bounded buffer; skips long arguments without holding them."""

    __slots__ = ("_f", "_buf", "_pos", "_base", "_seekable", "_left")

    def __init__(self, f: Stream, seekable: bool | None = None) -> None:
        self._f = f
        self._buf = b""
        self._pos = 0
        self._base = 0          # offset (from where scanning began) of _buf[0]
        self._left = None       # bytes in the stream after the buffer, when known
        if seekable is None:
            try:
                seekable = bool(as_seekable(f).seekable())
            except (AttributeError, OSError, ValueError):
                seekable = False
        if seekable:
            try:
                seeking = as_seekable(f)
                cur = seeking.tell()
                end = seeking.seek(0, io.SEEK_END)
                seeking.seek(cur)
                self._left = max(0, end - cur)
            except (AttributeError, OSError, ValueError):
                seekable = False
        self._seekable = seekable

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def _raw(self, n: int) -> bytes:
        data = self._f.read(n) or b""
        if self._left is not None:
            self._left = max(0, self._left - len(data))
        return data

    def _fill(self, n: int) -> int:
        """Make n bytes available from _pos if the stream has them; return how many are."""
        avail = len(self._buf) - self._pos
        if avail >= n:
            return avail
        parts = [self._buf[self._pos:]] if avail else []
        self._base += self._pos
        while avail < n:
            chunk = self._raw(max(CHUNK, n - avail))
            if not chunk:
                break
            parts.append(chunk)
            avail += len(chunk)
        self._buf = b"".join(parts)
        self._pos = 0
        return avail

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return self._buf[self._pos:self._pos + n]

    def at_eof(self) -> bool:
        return self._fill(1) == 0

    def unread_buffer(self) -> bytes:
        return self._buf[self._pos:]

    def read_byte(self) -> int:
        pos = self._pos
        if pos < len(self._buf):
            self._pos = pos + 1
            return self._buf[pos]
        if self._fill(1) == 0:
            return -1
        self._pos = 1
        return self._buf[0]

    def read(self, n: int) -> bytes:
        if self._fill(n) < n:
            at = self.offset
            self._pos = len(self._buf)
            raise Invalid(f"truncated at offset {at}: {n} bytes expected")
        pos = self._pos
        self._pos = pos + n
        return self._buf[pos:pos + n]

    def skip(self, n: int) -> None:
        avail = len(self._buf) - self._pos
        if n <= avail:
            self._pos += n
            return
        n -= avail
        self._base += len(self._buf)
        self._buf = b""
        self._pos = 0
        if self._seekable and self._left is not None:
            if n > self._left:
                self._base += self._left
                as_seekable(self._f).seek(0, io.SEEK_END)
                self._left = 0
                raise Invalid(f"truncated at offset {self._base}: argument runs past the end")
            as_seekable(self._f).seek(n, io.SEEK_CUR)
            self._left -= n
            self._base += n
            return
        while n:
            chunk = self._raw(min(CHUNK, n))
            if not chunk:
                raise Invalid(f"truncated at offset {self._base}: argument runs past the end")
            n -= len(chunk)
            self._base += len(chunk)

    def skip_to_end(self) -> None:
        """Skip whatever is left: seeking when the stream allows, else reading and dropping."""
        self._base += len(self._buf)
        self._buf = b""
        self._pos = 0
        if self._seekable and self._left is not None:
            as_seekable(self._f).seek(0, io.SEEK_END)
            self._base += self._left
            self._left = 0
            return
        while chunk := self._raw(CHUNK):
            self._base += len(chunk)

    def readline(self, limit: int) -> bytes | None:
        """The next line without its newline; None (line consumed) if it is longer than limit."""
        while True:
            buf, pos = self._buf, self._pos
            i = buf.find(b"\n", pos, pos + limit + 1)
            if i >= 0:
                self._pos = i + 1
                return buf[pos:i]
            avail = len(buf) - pos
            if avail > limit:
                break
            if self._fill(avail + 1) <= avail:
                raise Invalid(f"truncated at offset {self.offset + avail}: newline expected")
        while True:  # overlong line: discard through the newline
            i = self._buf.find(b"\n", self._pos)
            if i >= 0:
                self._pos = i + 1
                return None
            self._base += len(self._buf)
            self._buf = self._raw(CHUNK)
            self._pos = 0
            if not self._buf:
                raise Invalid(f"truncated at offset {self._base}: newline expected")

