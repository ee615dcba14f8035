"""Page documents of product rows (shared/products.py), without servers."""

from __future__ import annotations

from typing import Any

from services.ingest.csv_types import CsvLimits
from shared.products import MAX_PAGE_BYTES, MAX_PAGE_ROWS, PageBuilder, page_id, rows_per_page


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


def test_serial_offset_is_known_only_when_serials_follow_the_rows() -> None:
    assert build([1, 2, 3, 4], 2)[0].serial_offset == 1
    assert build([1001, 1002, 1003], 2)[0].serial_offset == 1001
    assert build([1, 2, 4, 5], 2)[0].serial_offset is None
    assert build([3, 2, 1], 2)[0].serial_offset is None
    assert build([], 2)[0].serial_offset is None


def test_flush_of_an_empty_builder_is_none() -> None:
    pages = PageBuilder("rid", 2)
    assert pages.flush() is None
    pages.add(1, "a", 2, [])
    pages.add(2, "b", 3, [])  # completes the page
    assert pages.flush() is None


def test_a_page_of_the_largest_allowed_rows_stays_under_the_size_cap() -> None:
    default = CsvLimits()
    assert rows_per_page(default.max_row_bytes()) * default.max_row_bytes() <= MAX_PAGE_BYTES
    huge = CsvLimits(max_urls_per_row=1000)
    assert rows_per_page(huge.max_row_bytes()) >= 1
    assert rows_per_page(huge.max_row_bytes()) * huge.max_row_bytes() <= MAX_PAGE_BYTES
    assert rows_per_page(100) == MAX_PAGE_ROWS
    assert rows_per_page(MAX_PAGE_BYTES * 2) == 1
