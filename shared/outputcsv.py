"""Building a request's output CSV from MongoDB, streaming, in input order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import IO, Any

from shared.csvtable import OUTPUT_HEADER, URL_SEPARATOR, format_row
from shared.mongo import Store
from shared.products import Product, iter_products


def output_row(product: Product) -> list[str]:
    """A failed image keeps its position with an empty value."""
    return [str(product.serial), product.name, URL_SEPARATOR.join(product.input_urls),
            URL_SEPARATOR.join(u or "" for u in product.output_urls)]


async def iter_output_csv(store: Store, request: dict[str, Any]) -> AsyncIterator[bytes]:
    """UTF-8 (with BOM, so spreadsheet programs pick the encoding), CRLF, formula-safe.
    ``request`` is the request's ``requests`` document."""
    yield ("\ufeff" + format_row(OUTPUT_HEADER)).encode()
    async for product in iter_products(store, request):
        yield format_row(output_row(product)).encode()


async def write_output_csv(store: Store, request: dict[str, Any], out: IO[bytes]) -> int:
    """Write the CSV to ``out`` row by row (memory stays flat at any size);
    return the number of bytes written."""
    size = 0
    async for chunk in iter_output_csv(store, request):
        out.write(chunk)
        size += len(chunk)
    return size
