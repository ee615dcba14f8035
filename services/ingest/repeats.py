"""Repeated URLs within a request: one event per distinct URL (per chunk).

A URL named at several positions of one request is fetched and encoded once:
its first position *leads* a group, and the group's ``image.requested`` event
lists the other positions (``also``, at most ``MAX_ALSO``); those *covered*
positions get no event of their own, and the aggregator records the leader's
result for each of them. A URL with more copies gets one leader per
``MAX_ALSO + 1`` positions (the processor's cache, keyed by image id, still
fetches it once).

Two passes over the upload, as for the rows themselves:

* pass 1 (validation) feeds every URL to :class:`RepeatFinder`: 64-bit
  fingerprints (8 bytes a URL), whose result is the set of fingerprints seen
  more than once (the *candidates*; a fingerprint collision only makes a
  false candidate, which pass 2 tells apart);
* pass 2 (storing the pages) runs :class:`Grouper` over the rows in file
  order: it compares the candidates' URLs exactly, annotates each stored row
  (``lead``: its positions that lead a group; ``cover``: ``[position,
  leader_row, leader_position]`` of its covered positions) and yields one
  ``url_groups`` document per group, all stored before the upload is
  answered. Pages and groups are written once and never changed.

See docs/database.md (``product_pages``, ``url_groups``).
"""

from __future__ import annotations

import itertools
from array import array
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from shared.events import MAX_ALSO, MAX_ALSO_NAME_BYTES

BUCKETS = 64
CHUNK = 4096


def fingerprint(url: str) -> int:
    """A 64-bit fingerprint of a URL: ``hash``, stable within a process, which
    is where both passes of an upload run."""
    return hash(url)


class RepeatFinder:
    """Pass 1: which URL fingerprints occur more than once.

    Fingerprints are appended to an ``array`` (8 bytes a URL, no Python object
    per URL, at C speed); :meth:`repeated` then moves them into 64 buckets and
    checks one bucket at a time, so Python integers exist for one bucket only
    (under 0.3 s and 10 MB for the 500,000 URLs an upload may have).
    """

    def __init__(self) -> None:
        self._fps = array("q")

    def add(self, urls: list[str]) -> None:
        self._fps.extend(map(hash, urls))  # fingerprint(), at C speed

    def repeated(self) -> set[int]:
        """The fingerprints seen more than once (the table is emptied)."""
        fps, self._fps = self._fps, array("q")
        buckets = [array("q") for _ in range(BUCKETS)]
        while fps:  # from the end, a chunk at a time: the array shrinks as buckets fill
            chunk = fps[-CHUNK:]
            del fps[-CHUNK:]
            for fp in chunk:
                buckets[fp % BUCKETS].append(fp)
        out: set[int] = set()
        while buckets:
            bucket = buckets.pop()
            if len(set(bucket)) < len(bucket):
                ordered = sorted(bucket)
                out.update(a for a, b in itertools.pairwise(ordered) if a == b)
        return out


def group_id(request_id: str, row: int, position: int) -> str:
    """The ``url_groups`` id of the group led by ``(row, position)``: under the
    request's ``_id`` prefix, so ``shared.products.id_range`` covers it."""
    return f"{request_id}:{row:09d}:{position}"


@dataclass
class _Group:
    row: int
    serial: int
    position: int
    name: str
    url: str
    also: list[list[Any]] = field(default_factory=list)  # [row, serial, position, name]
    name_bytes: int = 0  # JSON bytes of the names in ``also``

    def doc(self, request_id: str) -> dict[str, Any]:
        return {"_id": group_id(request_id, self.row, self.position),
                "request_id": request_id, "row": self.row, "serial": self.serial,
                "position": self.position, "product_name": self.name, "url": self.url,
                "also": self.also}


class Grouper:
    """Pass 2: annotates rows in file order and collects the group documents."""

    def __init__(self, request_id: str, candidates: set[int] | None,
                 max_also: int = MAX_ALSO) -> None:
        self.request_id = request_id
        self._candidates = candidates or set()
        self._max_also = max_also
        self._open: dict[str, _Group] = {}  # url -> its group being filled
        self.groups = 0
        self.covered = 0

    def annotate(self, row: int, serial: int, name: str,
                 urls: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The fields to store on this row (``lead``, ``cover``; none for a row
        of distinct URLs) and the group documents it completed."""
        if not self._candidates:
            return {}, []
        lead: list[int] = []
        cover: list[list[int]] = []
        full: list[dict[str, Any]] = []
        name_bytes = len(encode_basestring(name).encode())
        for i, url in enumerate(urls):
            if fingerprint(url) not in self._candidates:
                continue
            group = self._open.get(url)
            if group is not None and len(group.also) < self._max_also and (
                    group.name_bytes + name_bytes <= MAX_ALSO_NAME_BYTES):
                group.also.append([row, serial, i, name])
                group.name_bytes += name_bytes
                cover.append([i, group.row, group.position])
                self.covered += 1
                continue
            if group is not None:
                full.append(group.doc(self.request_id))
            self._open[url] = _Group(row, serial, i, name, url)
            self.groups += 1
            lead.append(i)
        fields: dict[str, Any] = {}
        if lead:
            fields["lead"] = lead
        if cover:
            fields["cover"] = cover
        return fields, full

    def finish(self) -> list[dict[str, Any]]:
        """The documents of the groups still open (every group gets one, even
        a leader that turned out to cover nothing)."""
        docs = [g.doc(self.request_id) for g in self._open.values()]
        self._open.clear()
        return docs


def covered_positions(row: dict[str, Any]) -> set[int]:
    """Positions of a stored row that another position's event covers."""
    return {c[0] for c in row.get("cover") or ()}


def leader_of(row: dict[str, Any], position: int) -> tuple[int, int] | None:
    """``(row, position)`` of the leader of a covered position, else None."""
    for c in row.get("cover") or ():
        if c[0] == position:
            return int(c[1]), int(c[2])
    return None
