"""Product rows in MongoDB: pages of consecutive CSV rows (see docs/database.md).

A request's rows are stored as ``product_pages`` documents of ``page_rows``
consecutive rows each (MongoDB's bucket pattern), written once by ingest and
never changed. One document per row made the insert the slowest part of an
upload (a server spends far more per document than per byte), and the pages
need no secondary index: page ids are computed, ``<request_id>:<first_row>``.

Output URLs are not copied into the pages: each image's result lives in its
``images`` document, and a product's output list is read from there in
position order (:func:`iter_products`), so there is one place to update and
one source of truth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from shared.errors import PermanentError
from shared.mongo import Store, position_id

MAX_PAGE_ROWS = 100
MAX_PAGE_BYTES = 8 * 1024 * 1024  # well under MongoDB's 16 MiB document limit
SERIALS_PER_DOC = 1000
_MASK64 = (1 << 64) - 1


def rows_per_page(max_row_bytes: int) -> int:
    """Rows per page such that a page of the largest allowed rows stays under
    ``MAX_PAGE_BYTES``."""
    return max(1, min(MAX_PAGE_ROWS, MAX_PAGE_BYTES // max(1, max_row_bytes)))


def serial_bucket(serial: int, buckets: int) -> int:
    """The directory document of a serial: mixed first (splitmix64's finaliser),
    so serials in steps of 10, 100, or of ``buckets`` still spread evenly."""
    x = serial & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) % buckets


def page_id(request_id: str, first_row: int) -> str:
    return f"{request_id}:{first_row:09d}"


def id_range(request_id: str) -> dict[str, str]:
    """An ``_id`` filter for every page of one request (ids share its prefix)."""
    return {"$gte": f"{request_id}:", "$lt": f"{request_id};"}


@dataclass
class Product:
    row: int  # 0-based index among the CSV's data rows
    serial: int
    name: str
    input_urls: list[str]
    output_urls: list[str | None]  # None: not processed yet, or failed


class PageBuilder:
    """Groups rows, in file order, into page documents, and maps serials to rows.

    When the serial numbers follow the rows (serial = row + ``serial_offset``
    for every row, as in the usual 1, 2, 3...) a product is found from its
    serial with arithmetic. Otherwise :meth:`serial_docs` gives a directory,
    ``serial_buckets`` documents of about ``SERIALS_PER_DOC`` serials each
    (:func:`serial_bucket`), so a lookup is still two ``_id`` reads.
    """

    def __init__(self, request_id: str, page_rows: int) -> None:
        self.request_id, self.page_rows = request_id, page_rows
        self.rows = 0
        self._page: list[dict[str, Any]] = []
        self._offset: int | None = None
        self._row_of: dict[int, int] | None = None  # serial -> row, once not linear

    @property
    def serial_offset(self) -> int | None:
        return self._offset if self._row_of is None else None

    @property
    def serial_buckets(self) -> int | None:
        if self._row_of is None:
            return None
        return max(1, -(-len(self._row_of) // SERIALS_PER_DOC))

    def add(self, serial: int, name: str, line: int, urls: list[str]) -> dict[str, Any] | None:
        """Add the next row; returns the page it completed, if any."""
        if self._offset is None:
            self._offset = serial - self.rows
        elif self._row_of is None and serial - self.rows != self._offset:
            offset = self._offset  # the rows so far did follow their serials
            self._row_of = {row + offset: row for row in range(self.rows)}
        if self._row_of is not None:
            self._row_of[serial] = self.rows
        self._page.append({"serial": serial, "name": name, "line": line, "input_urls": urls})
        self.rows += 1
        return self.flush() if len(self._page) >= self.page_rows else None

    def serial_docs(self) -> list[dict[str, Any]]:
        """The ``product_serials`` documents (none when serials follow rows)."""
        buckets = self.serial_buckets
        if self._row_of is None or buckets is None:
            return []
        maps: list[dict[str, int]] = [{} for _ in range(buckets)]
        for serial, row in self._row_of.items():
            maps[serial_bucket(serial, buckets)][str(serial)] = row
        return [{"_id": page_id(self.request_id, b), "request_id": self.request_id,
                 "rows": rows} for b, rows in enumerate(maps)]

    def flush(self) -> dict[str, Any] | None:
        """The page of rows added since the last page, if any."""
        if not self._page:
            return None
        first = self.rows - len(self._page)
        doc = {"_id": page_id(self.request_id, first), "request_id": self.request_id,
               "first_row": first, "rows": self._page}
        self._page = []
        return doc


async def _outputs(store: Store, request_id: str,
                   rows: list[dict[str, Any]]) -> list[list[str | None]]:
    """Each row's output URLs by position, as far as recorded (None: not
    processed yet, or failed), with one query for all of them."""
    ids = [[position_id(request_id, r["serial"], i) for i in range(len(r["input_urls"]))]
           for r in rows]
    found: dict[str, str | None] = {}
    async for img in store.images.find({"_id": {"$in": [i for row in ids for i in row]}},
                                       {"status": 1, "output_url": 1}):
        found[img["_id"]] = img.get("output_url") if img.get("status") == "succeeded" else None
    return [[found.get(i) for i in row] for row in ids]


async def iter_products(store: Store, request: dict[str, Any], *, start: int = 0,
                        limit: int | None = None) -> AsyncIterator[Product]:
    """The request's products in input order from row ``start``, with their
    output URLs as far as recorded. ``request`` is its ``requests`` document.

    Pages are read one at a time by computed id (no sort, no scan), so memory
    stays flat at any size. A missing page raises ``PermanentError``
    (``product_rows_missing``) rather than yield fewer products.
    """
    rid, count = request["_id"], request["product_count"]
    end = count if limit is None else min(count, start + limit)
    if start >= end:
        return
    page_rows = _page_rows(request)
    for page_start in range(start - start % page_rows, end, page_rows):
        page = await store.product_pages.find_one({"_id": page_id(rid, page_start)})
        if page is None:  # never silently short: a CSV missing rows would look complete
            raise _missing(rid, f"product page {page_id(rid, page_start)!r} is not in MongoDB")
        skip = max(0, start - page_start)
        rows = page["rows"][skip:end - page_start]
        outputs = await _outputs(store, rid, rows)
        for k, (r, out) in enumerate(zip(rows, outputs, strict=True), start=page_start + skip):
            yield Product(row=k, serial=r["serial"], name=r["name"], input_urls=r["input_urls"],
                          output_urls=out)


def _page_rows(request: dict[str, Any]) -> int:
    if not request.get("page_rows"):  # re-created from events: ingest's rows are not here
        raise _missing(request["_id"], "its product rows are not in MongoDB")
    return int(request["page_rows"])


def _missing(request_id: str, what: str) -> PermanentError:
    return PermanentError(
        f"request {request_id}: {what}; was the request withdrawn, or the database restored "
        "without its product pages?", code="product_rows_missing")


async def check_complete(store: Store, request: dict[str, Any]) -> None:
    """Raise ``product_rows_missing`` unless every page of the request is stored
    (before a response starts streaming, when it can still be an error)."""
    count = request["product_count"]
    if not count:
        return
    page_rows = _page_rows(request)
    stored = await store.product_pages.count_documents({"_id": id_range(request["_id"])})
    expected = -(-count // page_rows)
    if stored < expected:
        raise _missing(request["_id"],
                       f"only {stored} of its {expected} product pages are in MongoDB")


async def find_product(store: Store, request: dict[str, Any],
                       serial: int) -> dict[str, Any] | None:
    """The stored row (``serial``, ``name``, ``line``, ``input_urls``) with this
    serial number, or None.

    By arithmetic when the serials follow the rows (``serial_offset``), else
    through the serial directory (``serial_buckets``); both are set when the
    upload is accepted. Before that (a callback racing the upload) the
    request's pages are scanned.
    """
    rid, page_rows = request["_id"], request.get("page_rows") or 1
    offset, buckets = request.get("serial_offset"), request.get("serial_buckets")
    row: int | None = None
    if offset is not None:
        row = serial - offset
    elif buckets:
        directory = await store.product_serials.find_one(
            {"_id": page_id(rid, serial_bucket(serial, buckets))}, {f"rows.{serial}": 1})
        row = ((directory or {}).get("rows") or {}).get(str(serial))
    match = {"rows": {"$elemMatch": {"serial": serial}}}
    if row is not None:
        if not 0 <= row < request["product_count"]:
            return None
        query: dict[str, Any] = {"_id": page_id(rid, row - row % page_rows)}
    elif offset is not None or buckets:
        return None
    else:
        query = {"_id": id_range(rid), "rows.serial": serial}
    page = await store.product_pages.find_one(query, match)
    rows = (page or {}).get("rows") or []
    return rows[0] if rows else None
