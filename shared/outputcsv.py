"""Building a request's output CSV from MongoDB, streaming, in input order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import IO, Any

from shared.csvtable import OUTPUT_HEADER, URL_SEPARATOR, format_row
from shared.mongo import Store


def output_row(product: dict[str, Any]) -> list[str]:
    """A failed image keeps its position with an empty value."""
    outputs = [u or "" for u in product.get("output_urls") or []]
    return [str(product["serial"]), product["name"], URL_SEPARATOR.join(product["input_urls"]),
            URL_SEPARATOR.join(outputs)]


async def iter_output_csv(store: Store, request_id: str) -> AsyncIterator[bytes]:
    """UTF-8 (with BOM, so spreadsheet programs pick the encoding), CRLF, formula-safe."""
    yield ("\ufeff" + format_row(OUTPUT_HEADER)).encode()
    cursor = store.products.find({"request_id": request_id}).sort("row", 1)
    async for product in cursor:
        yield format_row(output_row(product)).encode()


async def write_output_csv(store: Store, request_id: str, out: IO[bytes]) -> int:
    """Write the CSV to ``out`` row by row (memory stays flat at any size);
    return the number of bytes written."""
    size = 0
    async for chunk in iter_output_csv(store, request_id):
        out.write(chunk)
        size += len(chunk)
    return size
