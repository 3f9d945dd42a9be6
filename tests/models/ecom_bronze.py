"""Test helper: the real ecom dataset as canonical ``bronze.events`` rows (no mocks).

``ecom.csv.gz`` (Apache-2.0): 31,106 events of 600 users, Jan–Jun 2024, of which 30 rows are
exact duplicates (31,076 distinct). Each CSV row becomes one canonical event:

* ``event_id`` = uuid5 of the row's fields, so exact duplicate rows share an id;
* ``event_type`` "track", ``event_name`` = the CSV event, ``user_id`` = the CSV user_id,
  ``anonymous_id`` = ``anon-<session_id>``, ``platform`` = the CSV platform;
* ``event_ts`` = the CSV timestamp read as UTC, ``ds`` its date;
* ``received_at`` = :data:`RECEIVED_BASE` + row index µs; ``source`` "test".

On top, :func:`resends` makes SDK re-sends of some events: same event_id, received later,
with a clock-skew correction that moves ``event_ts`` to *another* ``ds`` partition (both
later and earlier days). Silver must keep the original copy and nothing of the re-sends.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake

_REPO = Path(__file__).resolve().parents[2]
CSV_FIELDS = ("user_id", "session_id", "event", "timestamp", "platform",
              "acquisition_channel", "user_cohort", "user_lifecycle")
RECEIVED_BASE = dt.datetime(2024, 7, 1, tzinfo=dt.timezone.utc)
NAMESPACE = uuid.UUID("6f0b1a7e-2f43-4c1e-9a51-2d1f1e7f4b10")


def ecom_csv_path() -> Path:
    """The demo's copy if it exists, else the shared dataset next to the repository."""
    demo = _REPO / "src" / "headwater" / "demo" / "data" / "ecom.csv.gz"
    if demo.exists():
        return demo
    return _REPO.parent / "shared" / "datasets" / "ecom.csv.gz"


def read_csv_rows() -> list[dict[str, str]]:
    """The CSV rows as dicts of strings, in file order."""
    opts = pacsv.ConvertOptions(column_types={f: pa.string() for f in CSV_FIELDS})
    with gzip.open(ecom_csv_path(), "rb") as f:
        return pacsv.read_csv(f, convert_options=opts).to_pylist()


def event_id(row: dict[str, str]) -> str:
    return str(uuid.uuid5(NAMESPACE, "\x1f".join(row[f] for f in CSV_FIELDS)))


def canonical(rows: list[dict[str, str]], first_index: int = 0) -> list[dict]:
    """Canonical event dicts (EVENT_SCHEMA columns) of CSV rows; ``first_index`` numbers
    the first row for ``received_at``."""
    out = []
    for i, row in enumerate(rows, start=first_index):
        ts = dt.datetime.fromisoformat(row["timestamp"]).replace(tzinfo=dt.timezone.utc)
        out.append({
            "event_id": event_id(row),
            "event_type": "track",
            "event_name": row["event"],
            "anonymous_id": f"anon-{row['session_id']}",
            "user_id": row["user_id"],
            "event_ts": ts,
            "received_at": RECEIVED_BASE + dt.timedelta(microseconds=i),
            "source": "test",
            "surface": "web" if row["platform"] == "desktop" else "mobile",
            "platform": row["platform"],
            "properties": json.dumps({k: row[k] for k in ("session_id", "acquisition_channel",
                                                          "user_cohort", "user_lifecycle")}),
            "context": "{}",
            "schema_version": "1",
            "ds": ts.date(),
        })
    return out


def resends(events: list[dict], every: int = 97) -> list[dict]:
    """SDK re-sends of every ``every``-th event: same event_id, received one day later, with
    event_ts moved by +2 days (odd picks) or -3 days (even picks), so the copy sits in
    another ds partition than the original."""
    out = []
    for k, ev in enumerate(events[::every]):
        shift = dt.timedelta(days=2 if k % 2 else -3)
        ts = ev["event_ts"] + shift
        out.append({**ev, "event_ts": ts, "ds": ts.date(),
                    "received_at": ev["received_at"] + dt.timedelta(days=1),
                    "context": '{"resent": true}'})
    return out


def write_bronze(home: Home, *, batches: int = 4, with_resends: bool = True) -> list[dict]:
    """Write the dataset to ``bronze.events`` of ``home`` with ``append_once`` (app_id
    ``"test"``): the CSV in ``batches`` micro-batches, then the re-sends as one more batch.
    Returns the original (not re-sent) canonical events, in CSV order."""
    rows = read_csv_rows()
    events = canonical(rows)
    lake = Lake.of(home)
    size = -(-len(events) // batches)
    for b in range(batches):
        chunk = events[b * size:(b + 1) * size]
        lake.append_once("bronze.events", pa.Table.from_pylist(chunk, schema=EVENT_SCHEMA), app_id="test", batch_id=b)
    if with_resends:
        lake.append_once("bronze.events", pa.Table.from_pylist(resends(events), schema=EVENT_SCHEMA),
                         app_id="test", batch_id=batches)
    return events
