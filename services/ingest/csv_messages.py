"""Human messages of the scanner's issue codes (``str.format`` templates).

Cell-level messages (serial, name, URL) live next to their checks in
:mod:`services.ingest.csv_cells`; encoding messages in :mod:`services.ingest.csv_text`.
"""

from __future__ import annotations

from services.ingest.csv_types import NAME, SERIAL, URLS

_HEADER_LINE = f"'{SERIAL},{NAME},{URLS}'"

MESSAGES: dict[str, str] = {
    # errors
    "file_empty": "The file is empty. Upload a CSV with the header line "
    + _HEADER_LINE
    + " followed by one line per product.",
    "no_data_rows": "The file has a header but no product rows; add one line per product "
    "below the header.",
    "header_missing": "The first line looks like data, not a header. Add the header line "
    + _HEADER_LINE
    + " at the top.",
    "missing_column": "Required column {canonical!r} was not found. Found headers: {found}. "
    "Accepted names for it (case, spaces and punctuation are ignored): {accepted}.",
    "duplicate_column": "More than one column is named like {canonical!r}; keep only one.",
    "malformed_record": "This record could not be read ({detail}); check its double quotes.",
    "unterminated_quote": "A quoted cell starting on this line is never closed; add the "
    'missing double quote (").',
    "too_many_rows": "The file has more than {limit} product rows; split it into several files.",
    "too_many_cells": "This row has {count} cells but the header has {width}. Put cells that "
    "contain the delimiter in double quotes.",
    "serial_duplicate": "Serial number {serial} is already used on line {first}; serial "
    "numbers must be unique.",
    "urls_missing": "Give at least one image URL (http:// or https://).",
    "too_many_urls": "A row may have at most {limit} image URLs (this one has {count}); split "
    "the product over several rows.",
    "too_many_images": "The file has more than {limit} image URLs in total; split it into "
    "several files.",
    # warnings
    "extra_column": "Column {raw!r} (column {index}) is not used and was ignored.",
    "extra_column_shadowed": "Column {raw!r} was ignored: another column is used as {canonical!r}.",
    "urls_not_quoted": "The URL list is not in double quotes, so it spilled into extra "
    "columns; it was read as one list. Quote the cell to silence this warning.",
    "url_duplicate": "The same URL appears more than once in this row; each copy is "
    "processed separately.",
}
