"""What the relay publishes, read from a request's stored pages.

A cursor on the request (``relay``: page, skip: positions of that page already
passed, published) says where the next event is. A position covered by
another position's event (a repeated URL, ``services/ingest/repeats.py``) is
passed over without an event; a position that leads a group gets its group's
``also``, read from ``url_groups``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.ingest.repeats import covered_positions, group_id
from shared.errors import PermanentError
from shared.events import ImageRequestedEncoder
from shared.mongo import Store
from shared.products import page_id

SKIP_PER_ROUND = 10_000  # covered positions passed per call, beyond its events
GROUPS_PER_READ = 256  # url_groups read at a time


@dataclass
class StoredEvents:
    store: Store
    max_cached: int  # requests whose current page is kept
    _pages: dict[str, dict[str, Any]] = field(default_factory=dict)  # current page per request
    # per request: (row, position) of a leader -> its group's ``also``, a page's worth
    _groups: dict[str, dict[tuple[int, int], list[list[int]]]] = field(default_factory=dict)

    async def read(self, doc: dict[str, Any], cursor: dict[str, Any],
                   n: int) -> tuple[list[tuple[bytes, bytes]], int, int]:
        """The next ``n`` image events from the stored pages, the positions
        they pass and how many of those are covered (their URL's leader's
        event stands for them: no event of their own, no credit used). The
        ``cursor`` (page, skip: positions of that page already passed) is moved
        past them; at most ``n + SKIP_PER_ROUND`` positions a call."""
        rid, page_rows = doc["_id"], int(doc["page_rows"])
        encoder = ImageRequestedEncoder(rid)
        out: list[tuple[bytes, bytes]] = []
        passed = covered_passed = 0
        while (len(out) < n and passed < n + SKIP_PER_ROUND
               and cursor["page"] * page_rows < doc["product_count"]):
            page = await self.page(rid, cursor["page"] * page_rows)
            skip = cursor["skip"]
            for k, row in enumerate(page["rows"]):
                urls = row["input_urls"]
                if skip >= len(urls):
                    skip -= len(urls)
                    continue
                covered = covered_positions(row)
                stop, events = skip, len(out)
                while stop < len(urls) and (stop in covered or events < n):
                    events += stop not in covered
                    stop += 1
                also = await self._also(rid, page, k, skip, stop)
                out += encoder.encode_product(row["serial"], page["first_row"] + k,
                                              row["name"], urls, start=skip, stop=stop,
                                              covered=covered, also=also)
                covered_passed += sum(1 for i in covered if skip <= i < stop)
                cursor["skip"] += stop - skip
                passed += stop - skip
                skip = 0
                if len(out) >= n or passed >= n + SKIP_PER_ROUND:
                    break
            else:
                cursor["page"], cursor["skip"] = cursor["page"] + 1, 0
        return out, passed, covered_passed

    async def page(self, rid: str, first_row: int) -> dict[str, Any]:
        cached = self._pages.get(rid)
        if cached is not None and cached["first_row"] == first_row:
            return cached
        page = await self.store.product_pages.find_one({"_id": page_id(rid, first_row)})
        if page is None:
            raise PermanentError(f"request {rid}: product page {first_row} is missing",
                                 code="product_rows_missing")
        self._pages[rid] = page
        if len(self._pages) > self.max_cached:
            self.forget(next(iter(self._pages)))
        return page

    async def _also(self, rid: str, page: dict[str, Any], k: int, start: int,
                    stop: int) -> dict[int, list[list[int]]]:
        """``also`` of the leaders among positions ``start`` to ``stop`` of the
        page's row ``k``: read with the next leaders of the page, up to
        ``GROUPS_PER_READ`` groups at a time."""
        row, first = page["rows"][k], page["first_row"]
        wanted = [p for p in row.get("lead") or () if start <= p < stop]
        if not wanted:
            return {}
        cache = self._groups.setdefault(rid, {})
        if any((first + k, p) not in cache for p in wanted):
            cache.clear()
            ids = [group_id(rid, first + k, p) for p in wanted]
            for j in range(k + 1, len(page["rows"])):
                if len(ids) >= GROUPS_PER_READ:
                    break
                ids += [group_id(rid, first + j, p) for p in page["rows"][j].get("lead") or ()]
            async for group in self.store.url_groups.find(
                    {"_id": {"$in": ids}}, {"row": 1, "position": 1, "also": 1}):
                cache[(group["row"], group["position"])] = group["also"]
        missing = [p for p in wanted if (first + k, p) not in cache]
        if missing:
            raise PermanentError(f"request {rid}: the url group of row {first + k}, "
                                 f"position {missing[0]} is missing",
                                 code="product_rows_missing")
        return {p: cache[(first + k, p)] for p in wanted}

    def forget(self, rid: str) -> None:
        self._pages.pop(rid, None)
        self._groups.pop(rid, None)
