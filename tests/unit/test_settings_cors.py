"""Which browser origins may read the status API (CORS)."""

from __future__ import annotations

import pytest

from services.aggregator.settings import Settings


@pytest.mark.parametrize(("ingest", "origins"), [
    ("http://127.0.0.1:8000", ["http://127.0.0.1:8000", "http://localhost:8000"]),
    ("http://localhost:9000/", ["http://localhost:9000", "http://127.0.0.1:9000"]),
    ("https://upload.example.com/app", ["https://upload.example.com"]),
])
def test_by_default_only_the_upload_pages_origin(ingest: str, origins: list[str]) -> None:
    assert Settings(ingest_base_url=ingest).allowed_origins() == origins


def test_configured_origins_replace_the_default() -> None:
    s = Settings(cors_origins="https://a.example, https://b.example/")
    assert s.allowed_origins() == ["https://a.example", "https://b.example"]
