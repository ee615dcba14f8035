"""Value types of the CSV contract: limits, issues, parsed rows and the validation report.

Re-exported by :mod:`services.ingest.csvparse`; import them from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from shared.errors import InvalidInputError

#: Canonical column names, as they appear in the output CSV.
SERIAL = "S. No."
NAME = "Product Name"
URLS = "Input Image Urls"
REQUIRED_COLUMNS: tuple[str, str, str] = (SERIAL, NAME, URLS)

#: Offending values are cut to this many characters in issues.
VALUE_PREVIEW = 200


@dataclass(frozen=True)
class CsvLimits:
    """Size limits enforced while validating an upload."""

    max_rows: int = 200_000
    max_urls_per_row: int = 50
    max_images_per_request: int = 500_000
    max_name_length: int = 500
    max_url_length: int = 2048
    max_errors: int = 1000  # cap on the reported lists; the totals are still counted
    max_line_chars: int = 1_048_576  # one physical line; bounds memory on garbage input


DEFAULT_LIMITS = CsvLimits()


def preview(value: str | None) -> str | None:
    """Truncate an offending value for display."""
    if value is None or len(value) <= VALUE_PREVIEW:
        return value
    return value[:VALUE_PREVIEW] + "…"


@dataclass(frozen=True)
class CsvIssue:
    """One error or warning.

    ``line`` is the 1-based physical line where the record starts (the header is
    normally line 1; blank lines and multi-line quoted cells are counted).
    ``column`` is the canonical column name, the raw header name for extra
    columns, or ``None`` for file-level issues.
    """

    line: int
    column: str | None
    code: str
    message: str
    value: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ProductRow:
    """One valid data row. ``urls`` are in cell order, trimmed, empty items dropped."""

    line: int
    serial: int
    name: str
    urls: list[str]


@dataclass
class ValidationReport:
    errors: list[CsvIssue]  # capped at limits.max_errors, in file order
    error_count: int  # the true total
    warnings: list[CsvIssue]  # capped at limits.max_errors, in file order
    product_count: int  # data rows seen (valid or not)
    image_count: int  # URL items across all data rows
    encoding: str  # "utf-8", "utf-8-sig", "utf-16-le" or "utf-16-be"
    delimiter: str  # ",", "\t" or ";"
    warning_count: int = 0  # the true total of warnings
    headers: list[str] = field(default_factory=list)  # header cells as found
    max_row_bytes: int = 0  # bound on the stored size of the largest valid row
    # The rows of a valid file small enough to keep (``validate(keep_rows=)``).
    rows: list[ProductRow] | None = field(default=None, repr=False)
    # Of a valid file: fingerprints of the URLs seen more than once (pass 1 of
    # ``services/ingest/repeats.py``).
    repeated: set[int] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, rows=None, repeated=None))  # no deep copy of them
        del data["rows"], data["repeated"]
        data["ok"] = self.ok
        return data


class CsvInvalidError(InvalidInputError):
    """Raised by ``iter_products`` when it meets an error (the file did not validate)."""

    code = "csv_invalid"

    def __init__(self, issue: CsvIssue) -> None:
        super().__init__(f"line {issue.line}: {issue.message}", code=issue.code)
        self.issue = issue
