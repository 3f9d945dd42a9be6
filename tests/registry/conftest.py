from __future__ import annotations

import base64

import pytest

CLOSED_ORDER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "order_id": {"type": "string"},
        "revenue": {"type": "number", "minimum": 0},
        "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}},
    },
    "required": ["order_id", "revenue"],
}


def basic(write_key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}


@pytest.fixture
def order_schema() -> dict:
    import copy

    return copy.deepcopy(CLOSED_ORDER)
