"""The single streaming pass shared by ``validate`` and ``iter_products``.

:class:`Scanner` turns a binary stream into a sequence of events: a
:class:`ProductRow` for every valid data row and a :class:`Finding` for every
error or warning, in file order. Memory per scan: one decode chunk, the current
record, and the serial registry.

Records are read by :mod:`csv` from an iterator of physical lines, so
``reader.line_num`` counts physical lines and a record's first line is known
even when a quoted cell spans lines. A unique sentinel line is appended after the
last line: if it ends up inside a cell, a quote was left open.
"""

from __future__ import annotations

import csv
import itertools
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from services.ingest.csv_cells import (
    SerialRegistry,
    check_name,
    check_serial,
    check_url,
    split_urls,
)
from services.ingest.csv_header import ALIASES, detect_delimiter, match_header
from services.ingest.csv_messages import MESSAGES
from services.ingest.csv_text import CHUNK_SIZE, EncodingProblem, LineReader
from services.ingest.csv_types import (
    NAME,
    REQUIRED_COLUMNS,
    SERIAL,
    URLS,
    CsvIssue,
    CsvLimits,
    ProductRow,
    preview,
)


@dataclass(frozen=True)
class Finding:
    is_error: bool
    issue: CsvIssue


def _accepted_names(canonical: str) -> str:
    return ", ".join(sorted(a for a, c in ALIASES.items() if c == canonical))


def _is_blank(line: str) -> bool:
    return not line.strip(" \t\r\n,;")


def _issue(
    line: int, column: str | None, code: str, value: str | None, message: str | None, **kw: Any
) -> CsvIssue:
    text = message if message is not None else MESSAGES[code].format(**kw)
    return CsvIssue(line, column, code.removesuffix("_shadowed"), text, preview(value))


def _error(
    line: int,
    column: str | None,
    code: str,
    value: str | None = None,
    message: str | None = None,
    **kw: Any,
) -> Finding:
    return Finding(True, _issue(line, column, code, value, message, **kw))


def _warning(
    line: int, column: str | None, code: str, value: str | None = None, **kw: Any
) -> Finding:
    return Finding(False, _issue(line, column, code, value, None, **kw))


class Scanner:
    """One pass over an upload. Iterate :meth:`events`; afterwards ``encoding``,
    ``delimiter``, ``headers``, ``product_count`` and ``image_count`` are set."""

    def __init__(self, stream: BinaryIO, limits: CsvLimits, *, chunk_size: int = 0) -> None:
        self.limits = limits
        self._lines = LineReader(
            stream, chunk_size=chunk_size or CHUNK_SIZE, max_line_chars=limits.max_line_chars
        )
        self.encoding = "utf-8"
        self.delimiter = ","
        self.headers: list[str] = []
        self.product_count = 0
        self.image_count = 0
        self.max_row_bytes = 0  # an upper bound on the largest valid row as stored (BSON)
        self._serials = SerialRegistry(4 * limits.max_rows + 1)
        self._images_flagged = False
        self._columns: dict[str, int] = {}
        self._width = 0

    def events(self) -> Iterator[ProductRow | Finding]:
        try:
            yield from self._scan()
        except EncodingProblem as problem:
            self.encoding = self._lines.encoding
            yield _error(problem.line, None, problem.code, problem.value, problem.message)

    def _scan(self) -> Iterator[ProductRow | Finding]:
        lines = iter(self._lines)
        first = next((line for line in lines if not _is_blank(line)), None)
        self.encoding = self._lines.encoding
        if first is None:
            yield _error(1, None, "file_empty")
            return
        self.delimiter = detect_delimiter(first)
        header_line = self._lines.lines_read
        sentinel = f"\x00end-{uuid.uuid4().hex}"
        source = itertools.chain([first], lines, [sentinel])
        reader = csv.reader(source, delimiter=self.delimiter, skipinitialspace=True, strict=False)
        base = header_line - 1
        header = True
        while True:
            start = base + reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                self.product_count += 0 if header else 1
                yield _error(start, None, "malformed_record", detail=str(exc))
                continue
            if cells and sentinel in cells[-1]:
                if cells != [sentinel]:
                    yield _error(start, None, "unterminated_quote")
                    return
                break
            while cells and not cells[-1].strip():
                cells.pop()
            if not cells:
                continue
            if header:
                header = False
                if not (yield from self._header(start, cells)):
                    return
                continue
            self.product_count += 1
            if self.product_count > self.limits.max_rows:
                yield _error(start, None, "too_many_rows", limit=self.limits.max_rows)
                return
            yield from self._row(start, cells)
        if self.product_count == 0:
            yield _error(header_line, None, "no_data_rows")

    def _header(self, line: int, cells: list[str]) -> Generator[Finding, None, bool]:
        """Check the header and remember the column positions; return False if fatal."""
        self.headers = list(cells)
        self._width = len(cells)
        match = match_header(cells)
        found = ", ".join(repr(c) for c in cells)
        missing = match.missing
        if len(missing) == len(REQUIRED_COLUMNS) and any("://" in c for c in cells):
            yield _error(line, None, "header_missing", found)
            return False
        for index, raw in match.extras:
            if raw.strip():
                yield _warning(line, raw, "extra_column", raw, raw=raw, index=index + 1)
        for canonical, _index, raw in match.shadowed:
            yield _warning(line, raw, "extra_column_shadowed", raw, raw=raw, canonical=canonical)
        for canonical, _index, raw in match.duplicates:
            yield _error(line, canonical, "duplicate_column", raw, canonical=canonical)
        for canonical in missing:
            accepted = _accepted_names(canonical)
            yield _error(
                line,
                canonical,
                "missing_column",
                found,
                canonical=canonical,
                found=found,
                accepted=accepted,
            )
        self._columns = match.indexes
        return not missing and not match.duplicates

    def _cell(self, cells: list[str], column: str) -> str:
        index = self._columns[column]
        return cells[index] if index < len(cells) else ""

    def _row(self, line: int, cells: list[str]) -> Iterator[ProductRow | Finding]:
        limits, width = self.limits, self._width
        errors = 0
        url_cell = self._cell(cells, URLS)
        if len(cells) > width:
            extra = next(c for c in cells[width:] if c.strip())
            if self._columns[URLS] == width - 1:
                url_cell = ",".join(cells[width - 1 :])
                yield _warning(line, URLS, "urls_not_quoted", extra)
            else:
                errors += 1
                yield _error(line, None, "too_many_cells", extra, count=len(cells), width=width)
        serial_raw = self._cell(cells, SERIAL)
        serial, problem = check_serial(serial_raw)
        if problem:
            errors += 1
            yield _error(line, SERIAL, problem[0], serial_raw, problem[1])
        elif serial is not None:
            first = self._serials.first_line(serial, line)
            if first != line:
                errors += 1
                yield _error(
                    line, SERIAL, "serial_duplicate", serial_raw, serial=serial, first=first
                )
        name_raw = self._cell(cells, NAME)
        name, problem = check_name(name_raw, limits)
        if problem:
            errors += 1
            yield _error(line, NAME, problem[0], name_raw, problem[1])
        urls = split_urls(url_cell)
        self.image_count += len(urls)
        if not urls:
            errors += 1
            yield _error(line, URLS, "urls_missing", url_cell)
        elif len(urls) > limits.max_urls_per_row:
            errors += 1
            yield _error(
                line,
                URLS,
                "too_many_urls",
                str(len(urls)),
                limit=limits.max_urls_per_row,
                count=len(urls),
            )
        for url in urls:
            problem = check_url(url, limits)
            if problem:
                errors += 1
                yield _error(line, URLS, problem[0], url, problem[1])
        if len(urls) > 1 and len(set(urls)) < len(urls):
            yield _warning(line, URLS, "url_duplicate")
        if self.image_count > limits.max_images_per_request and not self._images_flagged:
            self._images_flagged = True
            errors += 1
            yield _error(line, URLS, "too_many_images", limit=limits.max_images_per_request)
        if not errors and serial is not None:
            # The raw cell (UTF-8) bounds the URLs' bytes; plus BSON's per-item
            # and per-row overhead, and the repeated-URL marks (``lead`` or
            # ``cover``: at most 40 bytes a position, services/ingest/repeats.py).
            size = len(url_cell.encode()) + 56 * len(urls) + len(name.encode()) + 96
            self.max_row_bytes = max(self.max_row_bytes, size)
            yield ProductRow(line, serial, name, urls)
