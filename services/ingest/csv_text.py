"""Streaming decode of an uploaded CSV into physical lines.

The binary stream is read in chunks and decoded with an incremental decoder, so
memory stays bounded by the chunk size plus the longest line. Lines are split on
CRLF, LF and CR (and only those: no Unicode line separators) and keep their
line ending, which is what :mod:`csv` needs to see quoted newlines.

Encodings: a byte-order mark selects UTF-8 or UTF-16 (LE/BE); without one the
text must be UTF-8. Anything else stops the scan with an :class:`EncodingProblem`
that names the line of the first bad byte.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Generator, Iterator
from typing import BinaryIO

CHUNK_SIZE = 64 * 1024

_NEWLINE_SPLIT = re.compile(r"(\r\n|\r|\n)")

_REENCODE_HINT = (
    "Re-save the file as 'CSV UTF-8' (or UTF-16 with a byte-order mark) in your spreadsheet "
    "program."
)


class EncodingProblem(Exception):
    """A fatal problem with the bytes of the file (not its CSV content)."""

    def __init__(self, line: int, code: str, message: str, value: str | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.code = code
        self.message = message
        self.value = value


def sniff_encoding(head: bytes) -> tuple[str, str, int]:
    """Return ``(codec, label, bom_length)`` for the first bytes of a file."""
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise EncodingProblem(
            1, "encoding_unsupported", "The file is UTF-32 encoded. " + _REENCODE_HINT
        )
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", "utf-8-sig", len(codecs.BOM_UTF8)
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le", "utf-16-le", 2
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be", "utf-16-be", 2
    if head.startswith(b"PK\x03\x04"):
        raise EncodingProblem(
            1,
            "not_a_csv",
            "This looks like a spreadsheet workbook (.xlsx or another zip file), not a CSV. "
            "Use 'Save as' / 'Download as' CSV.",
        )
    if b"\x00" in head:
        raise EncodingProblem(
            1,
            "encoding_unsupported",
            "The file contains NUL bytes: it is probably UTF-16 without a byte-order mark, "
            "or not a text file at all. " + _REENCODE_HINT,
        )
    return "utf-8", "utf-8", 0


class LineReader:
    """Iterate over the physical lines of a binary stream, decoding incrementally.

    ``lines_read`` is the number of lines handed out so far; ``encoding`` is set
    once iteration has started.
    """

    def __init__(
        self, stream: BinaryIO, *, chunk_size: int = CHUNK_SIZE, max_line_chars: int = 1 << 20
    ) -> None:
        self._stream = stream
        self._chunk_size = max(4, chunk_size)
        self._max_line = max_line_chars
        self.encoding = "utf-8"
        self.lines_read = 0
        self._tail = ""

    def _head(self) -> bytes:
        head = b""
        while len(head) < 4:
            data = self._stream.read(self._chunk_size)
            if not data:
                break
            head += data
        return head

    def __iter__(self) -> Iterator[str]:
        head = self._head()
        codec, self.encoding, bom = sniff_encoding(head[: self._chunk_size])
        decoder = codecs.getincrementaldecoder(codec)("strict")
        carry = ""
        data = head[bom:]
        final = False
        while True:
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(data, final)
            except UnicodeDecodeError as exc:
                whole = pending + data
                text = whole[: exc.start].decode(codec)
                yield from self._lines_of(carry + text, hold_cr=False, complete=False)
                column = len(self._tail) + 1
                bad = whole[exc.start : exc.end] or whole[exc.start : exc.start + 1]
                raise self._decode_problem(bad, column, truncated=final) from None
            carry = yield from self._lines_of(carry + text, hold_cr=not final, complete=final)
            if final:
                return
            data = self._stream.read(self._chunk_size)
            final = not data

    def _lines_of(self, text: str, *, hold_cr: bool, complete: bool) -> Generator[str, None, str]:
        """Yield the complete lines of ``text``; return (and remember) the unfinished tail."""
        held = ""
        if hold_cr and text.endswith("\r"):
            text, held = text[:-1], "\r"  # may be the first half of a CRLF
        parts = _NEWLINE_SPLIT.split(text)
        tail = parts.pop()
        for i in range(0, len(parts), 2):
            self.lines_read += 1
            yield parts[i] + parts[i + 1]
        if complete and tail:
            self.lines_read += 1
            yield tail
            tail = ""
        tail += held
        if len(tail) > self._max_line:
            raise EncodingProblem(
                self.lines_read + 1,
                "line_too_long",
                f"Line {self.lines_read + 1} is longer than {self._max_line} characters "
                "without a line break; this is not a product CSV.",
            )
        self._tail = tail
        return tail

    def _decode_problem(self, bad: bytes, column: int, *, truncated: bool) -> EncodingProblem:
        line = self.lines_read + 1
        shown = " ".join(f"0x{b:02X}" for b in bad[:4])
        if truncated and self.encoding.startswith("utf-16"):
            what = "ends in the middle of a character"
        else:
            what = f"is not valid {self.encoding} text (byte {shown} at character {column})"
        return EncodingProblem(
            line,
            "encoding_invalid",
            f"Line {line} {what}. The file was probably saved in a legacy encoding such as "
            f"Windows-1252 or Latin-1. {_REENCODE_HINT}",
            shown,
        )
