from __future__ import annotations

import base64
import datetime as dt

import httpx
import pytest

from headwater.ingest.tokens import Tokenizer
from headwater.config import Home
from tests.helpers import LogTail, start_collector

WRITE_KEY = "wk-collector-tests"
SOURCE = "web-app"
HMAC_KEY = bytes(range(32))
RECEIVED = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
RECEIVED_US = int(RECEIVED.timestamp()) * 1_000_000


@pytest.fixture(scope="package", autouse=True)
def one_worker():
    """The collectors of this package serve from one process (``collector.workers = 1``): the
    tests count requests in flight, RSS and rate limits of that process. ``test_workers.py``
    runs a subset with two.

    Nor do they shed load on event-loop delay (``collector.max_loop_delay_ms = 0``): on a
    loaded test machine the loop runs >250 ms late after a large request, and a test of
    another rule would get the delay's 429 instead of its own answer. The delay rule has its
    own test (``test_health.py``, a limit set explicitly)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADWATER_COLLECTOR_WORKERS", "1")
        mp.setenv("HEADWATER_COLLECTOR_MAX_LOOP_DELAY_MS", "0")
        yield


@pytest.fixture
def tokenizer() -> Tokenizer:
    return Tokenizer(HMAC_KEY)


def basic(write_key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()}


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    """A real collector (uvicorn subprocess on 127.0.0.1) shared by one test module."""
    home_dir = tmp_path_factory.mktemp("home")
    with start_collector(home_dir, write_key=WRITE_KEY, source=SOURCE, env={"HEADWATER_HMAC_KEY": HMAC_KEY.hex()}) as c:
        yield c


@pytest.fixture
def http(collector):
    with httpx.Client(base_url=collector.url, timeout=10) as client:
        yield client


@pytest.fixture
def events(collector) -> LogTail:
    """Rows appended to the ``events`` topic during the test."""
    return LogTail(collector.log, "events")


@pytest.fixture
def bad_rows(collector) -> LogTail:
    """Rows appended to the ``bad_rows`` topic during the test."""
    return LogTail(collector.log, "bad_rows")


@pytest.fixture
def home(collector) -> Home:
    return collector.home
