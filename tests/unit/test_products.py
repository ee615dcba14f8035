"""Page documents of product rows (shared/products.py), without servers."""

from __future__ import annotations

import io
from typing import Any

import bson

from services.ingest.csvparse import iter_products, validate
from shared.products import (
    MAX_PAGE_BYTES,
    MAX_PAGE_ROWS,
    PageBuilder,
    page_id,
    rows_per_page,
)


def build(serials: list[int], page_rows: int) -> tuple[PageBuilder, list[dict[str, Any]]]:
    pages, docs = PageBuilder("rid", page_rows), []
    for i, serial in enumerate(serials):
        if (doc := pages.add(serial, f"P{serial}", i + 2, [f"http://x/{serial}"])) is not None:
            docs.append(doc)
    if (last := pages.flush()) is not None:
        docs.append(last)
    return pages, docs


def test_rows_are_grouped_in_order_with_computable_ids() -> None:
    _, docs = build(list(range(1, 8)), page_rows=3)
    assert [d["_id"] for d in docs] == [page_id("rid", 0), page_id("rid", 3), page_id("rid", 6)]
    assert [d["first_row"] for d in docs] == [0, 3, 6]
    assert [[r["serial"] for r in d["rows"]] for d in docs] == [[1, 2, 3], [4, 5, 6], [7]]
    assert docs[0]["rows"][1] == {"serial": 2, "name": "P2", "line": 3,
                                  "input_urls": ["http://x/2"]}


def test_page_ids_sort_in_row_order() -> None:
    ids = [page_id("rid", row) for row in (0, 9, 10, 99, 100, 1_000_000)]
    assert ids == sorted(ids)


def test_flush_of_an_empty_builder_is_none() -> None:
    pages = PageBuilder("rid", 2)
    assert pages.flush() is None
    pages.add(1, "a", 2, [])
    pages.add(2, "b", 3, [])  # completes the page
    assert pages.flush() is None


def page_bytes(csv_text: str) -> tuple[int, int]:
    """(rows per page chosen for this file, BSON size of a full page of its largest row)."""
    report = validate(io.BytesIO(csv_text.encode()))
    assert report.ok, report.errors
    rows = list(iter_products(io.BytesIO(csv_text.encode())))
    largest = max(rows, key=lambda r: len(bson.encode({"u": r.urls, "n": r.name})))
    page_rows = rows_per_page(report.max_row_bytes)
    pages = PageBuilder("6b363f8a-a9db-414d-9ef6-88abf672b89a", page_rows)
    full = [pages.add(i + 1, largest.name, i + 2, largest.urls) for i in range(page_rows)]
    page = full[-1]
    assert page is not None and len(page["rows"]) == page_rows
    return page_rows, len(bson.encode(page))


def test_a_page_of_the_largest_rows_of_a_file_fits_in_a_document() -> None:
    # 4-byte characters are valid in a URL path: 50 URLs of 2,044 characters
    # (8 KB each in UTF-8) make a row of 400 KB.
    huge_url = "https://例え.jp/" + "\U0002000b" * 2030
    cell = ", ".join(huge_url + f"?{k}" for k in range(50))
    text = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f'{i},{"名" * 500},"{cell}"\n' for i in range(1, 4))
    page_rows, size = page_bytes(text)
    assert 1 <= page_rows < MAX_PAGE_ROWS
    assert size <= MAX_PAGE_BYTES < 16 * 1024 * 1024


def test_ordinary_files_get_full_pages() -> None:
    text = "S. No.,Product Name,Input Image Urls\n" + "".join(
        f'{i},Product {i},"https://img.example/{i}/a.jpg, https://img.example/{i}/b.jpg"\n'
        for i in range(1, 300))
    page_rows, size = page_bytes(text)
    assert page_rows == MAX_PAGE_ROWS and size < 64 * 1024
    assert rows_per_page(0) == MAX_PAGE_ROWS and rows_per_page(MAX_PAGE_BYTES * 2) == 1


