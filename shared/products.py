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


def rows_per_page(max_row_bytes: int) -> int:
    """Rows per page such that a page of the largest allowed rows stays under
    ``MAX_PAGE_BYTES``."""
    return max(1, min(MAX_PAGE_ROWS, MAX_PAGE_BYTES // max(1, max_row_bytes)))


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
    """Groups rows, in file order, into page documents of ``page_rows`` rows."""

    def __init__(self, request_id: str, page_rows: int) -> None:
        self.request_id, self.page_rows = request_id, page_rows
        self.rows = 0
        self._page: list[dict[str, Any]] = []

    def add(self, serial: int, name: str, line: int, urls: list[str],
            marks: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Add the next row (with its repeated-URL ``marks``, ``lead`` and
        ``cover``, if any: services/ingest/repeats.py); returns the page it
        completed, if any."""
        row = {"serial": serial, "name": name, "line": line, "input_urls": urls}
        if marks:
            row.update(marks)
        self._page.append(row)
        self.rows += 1
        return self.flush() if len(self._page) >= self.page_rows else None

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
        f"request {request_id}: {what}; was the database restored "
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


async def product_at(store: Store, request: dict[str, Any], row: int) -> dict[str, Any] | None:
    """The stored row (``serial``, ``name``, ``line``, ``input_urls``) at ``row``
    (0-based among the data rows), or None: one ``_id`` read, by arithmetic."""
    if not 0 <= row < request.get("product_count", 0) or not request.get("page_rows"):
        return None
    page_rows = int(request["page_rows"])
    first = row - row % page_rows
    page = await store.product_pages.find_one({"_id": page_id(request["_id"], first)},
                                              {"rows": {"$slice": [row - first, 1]}})
    rows = (page or {}).get("rows") or []
    return rows[0] if rows else None
