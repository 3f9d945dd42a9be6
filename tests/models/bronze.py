"""Test helper: hand-made canonical events written to a real ``bronze.events`` Delta table,
and reading the lake back (:func:`rows`, :func:`history`).

    write(home, [event("e1", T0, user="u1", anon="a1"), identify("i1", T0, "a1", "u1", plan="pro")])
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
from deltalake import DeltaTable

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.models.dag import MODELS
from tests.helpers import query

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, tzinfo=UTC)
MODEL = {m.table: m for m in MODELS}


def event(eid: str, ts: dt.datetime, *, user: str | None = "u1", anon: str | None = "a1",
          received: dt.datetime | None = None, **extra) -> dict:
    """A ``track`` event named "Viewed" on platform "web" (override any column by keyword)."""
    return {
        "event_id": eid, "event_type": "track", "event_name": "Viewed", "anonymous_id": anon,
        "user_id": user, "event_ts": ts, "received_at": received or ts, "source": "test",
        "surface": "web", "platform": "web", "properties": "{}", "context": "{}",
        "schema_version": "1", "ds": ts.date(), **extra,
    }


def identify(eid: str, ts: dt.datetime, anon: str | None, user: str, **traits) -> dict:
    """An ``identify`` of ``user`` sent from anonymous id ``anon`` with ``traits``."""
    return event(eid, ts, user=user, anon=anon, event_type="identify", event_name=None,
                 properties=json.dumps(traits))


def alias(eid: str, ts: dt.datetime, previous: str, user: str) -> dict:
    """An ``alias`` of ``previous`` to ``user`` (as the collector maps Segment's alias)."""
    return event(eid, ts, user=user, anon=None, event_type="alias", event_name=None,
                 properties=json.dumps({"previousId": previous}))


def write(home: Home, rows: list[dict], batch_id: int = 0) -> None:
    """Append ``rows`` to ``bronze.events`` as micro-batch ``batch_id`` (app_id "unit")."""
    Lake.of(home).append_once("bronze.events", pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), app_id="unit", batch_id=batch_id)


def rows(home: Home, text: str, params: dict | None = None) -> list[dict]:
    return query(home, text, params).to_pylist()


def history(home: Home, table: str) -> list[dict]:
    """The Delta commit history of ``table``, newest first."""
    return DeltaTable(Lake.of(home).uri(table)).history()
