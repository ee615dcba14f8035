"""Building a request's output CSV from MongoDB, streaming, in input order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import IO, Any

from shared.csvtable import OUTPUT_HEADER, URL_SEPARATOR, format_row
from shared.mongo import Store
from shared.products import Product, iter_products

# Maps a stored output URL to the one written (e.g. shared.links.OutputLinks.link).
UrlMap = Callable[[str | None], str | None]


def output_row(product: Product, link: UrlMap | None = None) -> list[str]:
    """A failed image keeps its position with an empty value."""
    outputs = product.output_urls if link is None else [link(u) for u in product.output_urls]
    return [str(product.serial), product.name, URL_SEPARATOR.join(product.input_urls),
            URL_SEPARATOR.join(u or "" for u in outputs)]


async def iter_output_csv(store: Store, request: dict[str, Any],
                          link: UrlMap | None = None) -> AsyncIterator[bytes]:
    """UTF-8 (with BOM, so spreadsheet programs pick the encoding), CRLF, formula-safe.
    ``request`` is the request's ``requests`` document. Output URLs are the stored
    (canonical) ones, or what ``link`` maps them to (the live CSV: presigned links)."""
    yield ("\ufeff" + format_row(OUTPUT_HEADER)).encode()
    async for product in iter_products(store, request):
        yield format_row(output_row(product, link)).encode()


async def write_output_csv(store: Store, request: dict[str, Any], out: IO[bytes]) -> int:
    """Write the CSV, with the canonical output URLs (the archived copy), to
    ``out`` row by row (memory stays flat at any size); return the bytes written."""
    size = 0
    async for chunk in iter_output_csv(store, request):
        out.write(chunk)
        size += len(chunk)
    return size
