"""The CSV contract of an upload: parsing and validation (see ``docs/csv.md``).

Two streaming passes over the same binary stream:

* :func:`validate` reads the whole file and reports every problem at once
  (capped at ``limits.max_errors``, with the true totals);
* :func:`iter_products` (after the caller seeks back to 0) yields the rows of a
  file that validated, in file order.

Neither pass holds the file in memory: bytes are decoded incrementally in chunks,
and only the ``serial -> line`` map grows with the number of rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import BinaryIO

from services.ingest.csv_scan import Finding, Scanner
from services.ingest.csv_text import CHUNK_SIZE
from services.ingest.csv_types import (
    DEFAULT_LIMITS,
    NAME,
    REQUIRED_COLUMNS,
    SERIAL,
    URLS,
    CsvInvalidError,
    CsvIssue,
    CsvLimits,
    ProductRow,
    ValidationReport,
)
from services.ingest.repeats import RepeatFinder

__all__ = [
    "DEFAULT_LIMITS",
    "NAME",
    "REQUIRED_COLUMNS",
    "SERIAL",
    "URLS",
    "CsvInvalidError",
    "CsvIssue",
    "CsvLimits",
    "ProductRow",
    "ValidationReport",
    "iter_products",
    "validate",
]

logger = logging.getLogger(__name__)


def validate(
    stream: BinaryIO,
    limits: CsvLimits = DEFAULT_LIMITS,
    *,
    chunk_size: int = CHUNK_SIZE,
    keep_rows: int = 0,
) -> ValidationReport:
    """Pass 1: check the whole upload and report all errors and warnings.

    ``chunk_size`` is the number of bytes read per ``stream.read`` call. A
    valid file of at most ``keep_rows`` rows comes back with its rows in
    ``report.rows``, so it need not be parsed again (pass 2); a larger one is
    never held in memory. The fingerprints of the URLs seen more than once
    come back in ``report.repeated`` (``services/ingest/repeats.py``).
    """
    scanner = Scanner(stream, limits, chunk_size=chunk_size)
    errors: list[CsvIssue] = []
    warnings: list[CsvIssue] = []
    error_count = warning_count = 0
    cap = limits.max_errors
    kept: list[ProductRow] | None = [] if keep_rows > 0 else None
    finder = RepeatFinder()
    for event in scanner.events():
        if not isinstance(event, Finding):
            finder.add(event.urls)
            if kept is not None:
                kept.append(event)
                if len(kept) > keep_rows:
                    kept = None
            continue
        if event.is_error:
            kept = None  # never used for an invalid file
            error_count += 1
            if len(errors) < cap:
                errors.append(event.issue)
        else:
            warning_count += 1
            if len(warnings) < cap:
                warnings.append(event.issue)
    report = ValidationReport(
        errors=errors,
        error_count=error_count,
        warnings=warnings,
        product_count=scanner.product_count,
        image_count=scanner.image_count,
        encoding=scanner.encoding,
        delimiter=scanner.delimiter,
        warning_count=warning_count,
        headers=scanner.headers,
        max_row_bytes=scanner.max_row_bytes,
        rows=kept,
        repeated=finder.repeated() if error_count == 0 else None,
    )
    logger.debug(
        "csv validated: %d products, %d images, %d errors, %d warnings, encoding %s",
        report.product_count,
        report.image_count,
        error_count,
        warning_count,
        report.encoding,
    )
    return report


def iter_products(
    stream: BinaryIO, limits: CsvLimits = DEFAULT_LIMITS, *, chunk_size: int = CHUNK_SIZE
) -> Iterator[ProductRow]:
    """Pass 2: yield the product rows of a file that validated, in file order.

    Raises :class:`CsvInvalidError` at the first error (the stream changed since
    :func:`validate`, or it was never validated); rows before it were yielded.
    """
    for event in Scanner(stream, limits, chunk_size=chunk_size).events():
        if isinstance(event, Finding):
            if event.is_error:
                raise CsvInvalidError(event.issue)
        else:
            yield event
