"""The signed-callback body model (services/ingest/callbacks.py), without servers."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.ingest.callbacks import CallbackIn

BODY: dict[str, Any] = {"request_id": "r", "row": 0, "position": 0,
                        "url": "https://images.example/a.jpg", "status": "failed",
                        "error_code": "fetch_failed"}


@pytest.mark.parametrize(("field", "value"), [
    ("row", -1), ("row", 2**31), ("position", -1), ("position", 2**31)])
def test_numbers_out_of_range_are_invalid_input_not_a_crash(field: str, value: int) -> None:
    with pytest.raises(ValidationError):
        CallbackIn.model_validate({**BODY, field: value})


def test_the_largest_numbers_allowed_validate() -> None:
    cb = CallbackIn.model_validate({**BODY, "row": 2**31 - 1, "position": 2**31 - 1})
    assert (cb.row, cb.position) == (2**31 - 1, 2**31 - 1)
