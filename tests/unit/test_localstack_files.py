"""The local stack's secret files are private from the moment they exist."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import localstack
from deploy.localstack import LocalStack


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_created_0600_without_a_later_chmod(
        tmp_path: Path, open_umask: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # A crash between writing and a chmod must not leave a readable file:
    # with chmod out of the picture the file must already be private.
    monkeypatch.setattr(Path, "chmod", lambda self, m: None)
    key, secret = LocalStack(tmp_path)._credentials()
    path = tmp_path / "credentials.json"
    assert mode(path) == 0o600
    assert LocalStack(tmp_path)._credentials() == (key, secret)  # reused, not regenerated


def test_an_existing_readable_file_is_made_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "s3-identities.json"
    path.write_text("old")
    path.chmod(0o644)
    localstack._write_private(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600
