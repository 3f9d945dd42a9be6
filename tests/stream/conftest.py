from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.log import Append, EventLog, open_log

T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def canonical(ids: list[str], received_at: dt.datetime = T0, event_ts: dt.datetime | None = None) -> pa.Table:
    """Canonical events with the given event ids (other columns fixed)."""
    n = len(ids)
    ts = event_ts or received_at
    return pa.table(
        {
            "event_id": ids,
            "event_type": ["track"] * n,
            "event_name": ["Order Completed"] * n,
            "anonymous_id": [None] * n,
            "user_id": [f"u{i % 7}" for i in range(n)],
            "event_ts": [ts] * n,
            "received_at": [received_at] * n,
            "source": ["test"] * n,
            "surface": ["server"] * n,
            "platform": ["server"] * n,
            "properties": ["{}"] * n,
            "context": ["{}"] * n,
            "schema_version": [None] * n,
            "ds": [ts.date()] * n,
        },
        schema=EVENT_SCHEMA,
    )


def append_events(log: EventLog, partition: int, ids: list[str], **kw) -> None:
    log.append([Append("events", partition, canonical(ids, **kw))])


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def event_log(home) -> EventLog:
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 4)
    log.ensure_topic("bad_rows", 1)
    yield log
    log.close()


def table_rows(home: Home, table: str, order: list[str] | None = None) -> list[dict]:
    """Rows of the lake table ``table`` of ``home`` as dicts, sorted by ``order`` (all columns
    by default; nulls first); ``[]`` if the table does not exist."""
    from headwater.lake.store import Lake

    lake = Lake.of(home)
    if not lake.exists(table):
        return []
    t = lake.dataset(table).to_table()
    keys = order or t.column_names
    rows = t.to_pylist()
    return sorted(rows, key=lambda r: tuple((r[k] is not None, r[k]) for k in keys))
