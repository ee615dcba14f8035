"""Header matching and delimiter detection.

Header names are compared after *normalisation*: Unicode case-folded, with every
character that is not a letter or digit removed (spaces, dots, underscores,
hyphens, slashes, brackets...). ``S. No.``, ``s_no``, ``SNo`` and ``S-NO`` are all
``sno``. The accepted normalised names are listed in :data:`ALIASES` and in
``docs/csv.md``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field

from services.ingest.csv_types import NAME, REQUIRED_COLUMNS, SERIAL, URLS

DELIMITERS: tuple[str, ...] = (",", "\t", ";")

_SERIAL_ALIASES = (
    "sno", "srno", "slno", "serialno", "serialnumber", "serial", "sn", "snumber", "srnumber",
    "no", "number", "rowno",
)  # fmt: skip
_NAME_ALIASES = (
    "productname", "productnames", "product", "name", "itemname", "producttitle", "title",
)  # fmt: skip
_URL_ALIASES = (
    "inputimageurls", "inputimageurl", "inputimages", "inputimage", "inputimagelinks",
    "inputimagelink", "inputurls", "inputurl", "imageurls", "imageurl", "imagelinks",
    "imagelink", "images", "image", "urls", "url", "imagesurls", "productimageurls",
    "productimages",
)  # fmt: skip

ALIASES: dict[str, str] = {
    **{a: SERIAL for a in _SERIAL_ALIASES},
    **{a: NAME for a in _NAME_ALIASES},
    **{a: URLS for a in _URL_ALIASES},
}
#: Lower is better: when two columns map to the same canonical name, the better
#: alias wins and the other column is ignored (with a warning).
_PRIORITY: dict[str, int] = {
    a: i for group in (_SERIAL_ALIASES, _NAME_ALIASES, _URL_ALIASES) for i, a in enumerate(group)
}
_NOT_ALNUM = re.compile(r"[\W_]+")


def normalise_header(raw: str) -> str:
    """Return the comparison key of a header cell (see module docstring)."""
    if raw.strip() in ("#", "№"):
        return "no"
    return _NOT_ALNUM.sub("", raw.casefold())


def canonical_column(raw: str) -> str | None:
    """Map a header cell to its canonical column name, or ``None`` if it is not one."""
    return ALIASES.get(normalise_header(raw))


@dataclass
class HeaderMatch:
    indexes: dict[str, int] = field(default_factory=dict)  # canonical name -> cell index
    extras: list[tuple[int, str]] = field(default_factory=list)  # ignored columns
    duplicates: list[tuple[str, int, str]] = field(default_factory=list)  # canonical, idx, raw
    shadowed: list[tuple[str, int, str]] = field(default_factory=list)  # lost to a better alias

    @property
    def missing(self) -> list[str]:
        return [c for c in REQUIRED_COLUMNS if c not in self.indexes]


def match_header(cells: list[str]) -> HeaderMatch:
    """Map header cells to canonical columns. Two cells with equally good names for the
    same column are a ``duplicates`` entry; a worse alias is ``shadowed`` (ignored)."""
    match = HeaderMatch()
    rank: dict[str, int] = {}
    for index, raw in enumerate(cells):
        key = normalise_header(raw)
        canonical = ALIASES.get(key)
        if canonical is None:
            match.extras.append((index, raw))
            continue
        priority = _PRIORITY[key]
        if canonical not in match.indexes:
            match.indexes[canonical], rank[canonical] = index, priority
        elif priority == rank[canonical]:
            match.duplicates.append((canonical, index, raw))
        elif priority > rank[canonical]:
            match.shadowed.append((canonical, index, raw))
        else:
            old = match.indexes[canonical]
            match.shadowed.append((canonical, old, cells[old]))
            match.indexes[canonical], rank[canonical] = index, priority
    return match


def detect_delimiter(line: str) -> str:
    """Pick the delimiter of the header line: the one under which most required
    columns are recognised; ties go to the one that splits the line into more cells,
    then to comma."""
    best = ","
    best_key = (-1, -1)
    for delimiter in DELIMITERS:
        cells = next(csv.reader([line], delimiter=delimiter, skipinitialspace=True), [])
        recognised = {canonical_column(c) for c in cells} - {None}
        key = (len(recognised), len(cells))
        if key > best_key:
            best, best_key = delimiter, key
    return best
