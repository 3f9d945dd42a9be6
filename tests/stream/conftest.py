from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.log.base import Append
from headwater.log.codec import encode
from headwater.log.sqlite import SqliteLog

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


def append_events(log: SqliteLog, partition: int, ids: list[str], **kw) -> None:
    log.append([Append("events", partition, len(ids), encode(canonical(ids, **kw)))])


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


@pytest.fixture
def event_log(home) -> SqliteLog:
    log = SqliteLog(home.log_path)
    log.ensure_topic("events", 4)
    log.ensure_topic("bad_rows", 1)
    yield log
    log.close()


def table_rows(path, order: list[str] | None = None) -> list[dict]:
    """Rows of the Delta table at ``path`` as dicts, sorted by ``order`` (all columns by
    default; nulls first); ``[]`` if the table does not exist."""
    from headwater.lake import tables

    ds = tables.dataset(path)
    if ds is None:
        return []
    t = ds.to_table()
    keys = order or t.column_names
    rows = t.to_pylist()
    return sorted(rows, key=lambda r: tuple((r[k] is not None, r[k]) for k in keys))
