"""A corrupt or truncated record of the event log goes to ``bronze.dead_letter`` with its
offsets and stored bytes, and the stream goes on: every other event reaches bronze.

The corruption is done to real records: bytes overwritten inside the SQLite file itself
(bit rot: SQLite keeps no page checksums, so the damaged blob reads back as it is), and a
payload cut in half (a torn write)."""

from __future__ import annotations

import sqlite3

import pyarrow as pa
from deltalake import DeltaTable

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.log import Append, open_log
from tests.helpers import query, run_stream

T = pa.scalar(1709294400000000, pa.timestamp("us", "UTC")).as_py()


def events(ids: list[str]) -> pa.Table:
    rows = [{"event_id": i, "event_type": "track", "event_name": "Signed Up", "user_id": "u1", "event_ts": T,
             "received_at": T, "source": "test", "ds": T.date()} for i in ids]
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def test_corrupt_and_truncated_records_go_to_dead_letter_and_the_stream_goes_on(tmp_path):
    home = Home(tmp_path / "home")
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 2)
    batches = [[f"ok{b}-{i}" for i in range(5)] for b in range(4)]
    rotten, torn = ["rot-marker-0", "rot-1"], ["torn-0", "torn-1", "torn-2"]
    log.append([Append("events", 0, events(batches[0]))])
    log.append([Append("events", 0, events(rotten))])  # offsets 5-6
    log.append([Append("events", 0, events(batches[1])), Append("events", 1, events(batches[2]))])
    log.append([Append("events", 1, events(torn))])  # partition 1, offsets 5-7
    log.append([Append("events", 1, events(batches[3]))])
    log.close()

    db = home.settings.log_url.removeprefix("sqlite://")
    conn = sqlite3.connect(db, isolation_level=None)
    torn_payload = conn.execute("SELECT payload FROM records WHERE partition = 1 AND base_offset = 5").fetchone()[0]
    conn.execute("UPDATE records SET payload = ? WHERE partition = 1 AND base_offset = 5", (torn_payload[: len(torn_payload) // 2],))
    rotten_payload = conn.execute("SELECT payload FROM records WHERE partition = 0 AND base_offset = 5").fetchone()[0]
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the database file
    conn.close()
    # Bit rot: overwrite the end of that record's blob (the IPC stream's last bytes) in the
    # file. A long blob spans overflow pages; its tail lies after a marker unique to it (an
    # event id, near the end) at the same distance as in the blob.
    raw = bytearray(open(db, "rb").read())
    marker = rotten_payload.index(b"rot-marker-0")
    at = raw.index(b"rot-marker-0") - marker
    assert raw[at + marker : at + len(rotten_payload)] == rotten_payload[marker:]  # contiguous from the marker on
    end = at + len(rotten_payload)
    raw[end - 16 : end] = b"\x13" * 16
    open(db, "wb").write(bytes(raw))

    run_stream(home)
    got = query(home, "SELECT event_id FROM bronze.events").column("event_id").to_pylist()
    assert sorted(got) == sorted(i for b in batches for i in b)
    dead = sorted(DeltaTable(Lake.of(home).uri("bronze.dead_letter")).to_pyarrow_table().to_pylist(), key=lambda r: r["partition"])
    assert [(d["topic"], d["partition"], d["offset"], d["count"]) for d in dead] == [("events", 0, 5, 2), ("events", 1, 5, 3)]
    assert dead[0]["payload"][-16:] == b"\x13" * 16 and dead[1]["payload"] == torn_payload[: len(torn_payload) // 2]
    assert all(d["error"] for d in dead)
    # the stream went on past them: later appends arrive too
    log = open_log(home.settings.log_url)
    log.append([Append("events", 0, events(["after"]))])
    log.close()
    run_stream(home)
    assert "after" in query(home, "SELECT event_id FROM bronze.events").column("event_id").to_pylist()
