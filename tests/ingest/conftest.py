from __future__ import annotations

import pytest

from headwater.ingest.tokens import Tokenizer

HMAC_KEY = bytes(range(32))
RECEIVED_US = 1_709_294_400_000_000  # 2024-03-01T12:00:00Z


@pytest.fixture
def tokenizer() -> Tokenizer:
    return Tokenizer(HMAC_KEY)
