"""Fixtures of the source tests: a fresh home, its tokenizer, and bronze read back after a
real stream run."""

from __future__ import annotations

import pytest

from headwater.ingest.tokens import Tokenizer
from headwater.config import Home
from headwater.stream.processor import BronzeStream, StreamConfig
from tests.helpers import query


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def token(home) -> Tokenizer:
    return Tokenizer(home.hmac_key())


@pytest.fixture
def bronze(home):
    """``bronze(sql) -> list[dict]``: run the real bronze stream over what the log holds now
    (``Trigger.AvailableNow``), then query the catalog."""

    def run(sql: str) -> list[dict]:
        BronzeStream(home, StreamConfig(compact_every=0)).run(available_now=True)
        return query(home, sql).to_pylist()

    return run
