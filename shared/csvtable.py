"""Writing CSV tables, in particular the output CSV of a request.

Rules (also in ``docs/csv.md``):

* RFC 4180 quoting: a cell is wrapped in double quotes when it contains the
  delimiter, a double quote, CR or LF, or starts or ends with a space or tab;
  inner double quotes are doubled. Other cells are written bare.
* Line ending CRLF by default (RFC 4180); ``"\\n"`` or ``"\\r"`` on request.
* Formula-injection guard (:func:`neutralise`): a cell that starts with ``=``,
  ``+``, ``-``, ``@``, TAB or CR gets a leading apostrophe, so spreadsheet
  programs show it as text instead of evaluating it. This is on by default.
* Output URL cells: the input and output URLs of a product are joined with
  :data:`URL_SEPARATOR` (``", "``). A failed image keeps its position as an empty
  item, so both cells always split into the same number of items on ``","``
  (then trim each item; do not drop empty items).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

OUTPUT_HEADER = ["S. No.", "Product Name", "Input Image Urls", "Output Image Urls"]
URL_SEPARATOR = ", "
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
LINE_ENDINGS = ("\r\n", "\n", "\r")
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be")

_NEEDS_QUOTES_ALWAYS = ('"', "\r", "\n")


def neutralise(cell: str) -> str:
    """Prefix ``'`` to a cell a spreadsheet would treat as a formula.

    The rule: the first character is one of ``= + - @``, TAB or CR.
    """
    if cell.startswith(FORMULA_PREFIXES):
        return "'" + cell
    return cell


def format_cell(cell: str, delimiter: str = ",") -> str:
    """Quote one cell if needed (see module docstring)."""
    if (
        delimiter in cell
        or any(c in cell for c in _NEEDS_QUOTES_ALWAYS)
        or cell[:1] in (" ", "\t")
        or cell[-1:] in (" ", "\t")
    ):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def format_row(
    row: Sequence[str],
    *,
    delimiter: str = ",",
    line_ending: str = "\r\n",
    neutralise_cells: bool = True,
) -> str:
    """One record, with its line ending."""
    cells = (neutralise(c) for c in row) if neutralise_cells else iter(row)
    return delimiter.join(format_cell(c, delimiter) for c in cells) + line_ending


def iter_table_text(
    rows: Iterable[Sequence[str]],
    *,
    delimiter: str = ",",
    line_ending: str = "\r\n",
    neutralise_cells: bool = True,
) -> Iterator[str]:
    """Yield the table as text, one record at a time."""
    if delimiter not in (",", "\t", ";"):
        raise ValueError(f"unsupported delimiter {delimiter!r}")
    if line_ending not in LINE_ENDINGS:
        raise ValueError(f"unsupported line ending {line_ending!r}")
    for row in rows:
        yield format_row(
            row, delimiter=delimiter, line_ending=line_ending, neutralise_cells=neutralise_cells
        )


def iter_table_bytes(
    rows: Iterable[Sequence[str]],
    *,
    encoding: str = "utf-8",
    delimiter: str = ",",
    line_ending: str = "\r\n",
    neutralise_cells: bool = True,
) -> Iterator[bytes]:
    """Yield the encoded table one record at a time (a BOM first for utf-8-sig / utf-16)."""
    encoder = codecs.getincrementalencoder(encoding)()
    for text in iter_table_text(
        rows, delimiter=delimiter, line_ending=line_ending, neutralise_cells=neutralise_cells
    ):
        yield encoder.encode(text)
    tail = encoder.encode("", final=True)
    if tail:
        yield tail


def write_table(
    rows: Iterable[Sequence[str]],
    out: IO[str] | IO[bytes],
    *,
    encoding: str = "utf-8",
    delimiter: str = ",",
    line_ending: str = "\r\n",
    neutralise_cells: bool = True,
) -> int:
    """Write ``rows`` to a text or binary file object; return the number of rows.

    ``encoding`` applies to binary outputs only (a text output has its own).
    """
    text_mode = _is_text(out)
    encoder = None if text_mode else codecs.getincrementalencoder(encoding)()
    count = 0
    for text in iter_table_text(
        rows, delimiter=delimiter, line_ending=line_ending, neutralise_cells=neutralise_cells
    ):
        out.write(encoder.encode(text) if encoder else text)  # type: ignore[arg-type]
        count += 1
    if encoder is not None:
        tail = encoder.encode("", final=True)
        if tail:
            out.write(tail)  # type: ignore[arg-type]
    return count


def _is_text(out: IO[str] | IO[bytes]) -> bool:
    if isinstance(out, io.TextIOBase):
        return True
    if isinstance(out, io.RawIOBase | io.BufferedIOBase):
        return False
    return "b" not in getattr(out, "mode", "")


@dataclass(frozen=True)
class OutputProduct:
    """One product of the output CSV. ``output_urls[i]`` belongs to ``input_urls[i]``;
    ``None`` or ``""`` marks a failed image."""

    serial: int
    name: str
    input_urls: Sequence[str]
    output_urls: Sequence[str | None]


def join_urls(urls: Iterable[str | None], separator: str = URL_SEPARATOR) -> str:
    return separator.join(u or "" for u in urls)


def output_csv_rows(
    products: Iterable[OutputProduct | tuple[int, str, Sequence[str], Sequence[str | None]]],
    *,
    header: bool = True,
    separator: str = URL_SEPARATOR,
) -> Iterator[list[str]]:
    """Rows of the output CSV (header first unless ``header=False``), ready for
    :func:`write_table`. Raises ``ValueError`` if a product's URL lists differ in length."""
    if header:
        yield list(OUTPUT_HEADER)
    for product in products:
        if not isinstance(product, OutputProduct):
            product = OutputProduct(*product)
        if len(product.input_urls) != len(product.output_urls):
            raise ValueError(
                f"serial {product.serial}: {len(product.input_urls)} input URLs but "
                f"{len(product.output_urls)} output URLs"
            )
        yield [
            str(product.serial),
            product.name,
            join_urls(product.input_urls, separator),
            join_urls(product.output_urls, separator),
        ]


def split_output_urls(cell: str) -> list[str]:
    """Inverse of :func:`join_urls` for consumers: split on ``","`` and trim, keeping
    empty items (failed images) so positions line up with the input cell."""
    return [item.strip() for item in cell.split(",")]
