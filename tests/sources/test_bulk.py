"""headwater import, bulk path: real files straight into bronze, chunk by chunk, exactly once.

The oracle is the live path: the same file through the event log and the real stream gives
the same silver (after the same batch build) and the same bad rows."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys

import pytest

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.registry.registry import Registry
from headwater.sources import bulk
from headwater.sources.files import BULK_MIN_ROWS, choose, import_file
from headwater.sources.mapping import Mapping
from tests.helpers import query, run_stream

KEY = bytes(range(32))
MAP = Mapping(timestamp="ts", user_id="user", anonymous_id="anon", event="event", event_type="kind")


def history_csv(path, users: int = 60) -> None:
    """A history export ordered by customer (as CDNOW's is): anonymous visits, then an
    identify, then orders over ~6 weeks; identical rows, personal data, every kind of bad row."""
    lines = ["user,anon,kind,event,ts,price,email"]
    for u in range(users):
        day = dt.datetime(2024, 1, 1, 9) + dt.timedelta(days=u % 40, minutes=u)
        lines.append(f",a{u},track,Page Viewed,{day.isoformat()}Z,,")
        lines.append(f"u{u},a{u},identify,,{(day + dt.timedelta(minutes=5)).isoformat()}Z,,user{u}@example.com")
        for k in range(u % 4):
            t = day + dt.timedelta(days=k, hours=k)
            lines.append(f"u{u},,track,Order Completed,{t.isoformat()}Z,{10 + k}.5,")
        if u % 7 == 0:  # a double click: two identical rows are two events
            lines += [f"u{u},,track,Product Viewed,{day.isoformat()}Z,1,"] * 2
    lines += [
        ",,track,Order Completed,2024-01-03T10:00:00Z,3,",  # no id
        "u1,,track,Order Completed,yesterday,3,",  # no time
        "u2,,track,Order Completed,1960-01-01T00:00:00Z,3,",  # out of range
        "u3,,bogus,Order Completed,2024-01-03T10:00:00Z,3,",  # no such type
        "u4,,track,Order Completed,2024-01-03T10:00:00Z,,",  # breaks the contract: price required
        'u5,,track,"broken,line",2024-01-03T10:00:00Z,3,,extra',  # not CSV
    ]
    path.write_text("\n".join(lines) + "\n")


def new_home(root) -> Home:
    home = Home(root)
    (home.root / "secrets").mkdir(parents=True, exist_ok=True)
    (home.root / "secrets" / "hmac.key").write_bytes(KEY)  # both homes tokenise alike
    schema = {"type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"]}
    Registry.from_home(home).register("Order Completed", schema)
    return home


def silver(home: Home) -> list[dict]:
    rows = query(home, "SELECT * EXCLUDE (received_at) FROM silver.events ORDER BY source, event_id").to_pylist()
    assert rows
    return rows


def bad_rows(home: Home) -> list[tuple]:
    rows = query(home, "SELECT source, error_type, reason, payload, protocol FROM bronze.bad_rows").to_pylist()
    return sorted(tuple(r.values()) for r in rows)


def test_the_live_and_the_bulk_path_give_the_same_silver_and_bad_rows(tmp_path):
    from headwater.models.run import build

    path = tmp_path / "history.csv"
    history_csv(path)
    live, bulk_home = new_home(tmp_path / "live"), new_home(tmp_path / "bulk")
    by_live = import_file(live, path, MAP, source="shop", mode="live")
    run_stream(live)
    by_bulk = import_file(bulk_home, path, MAP, source="shop", mode="bulk", chunk_rows=50)
    assert (by_bulk.path, by_bulk.chunks, by_bulk.resumed) == ("bulk", -(-by_bulk.rows // 50), 0)
    assert (by_bulk.rows, by_bulk.accepted, by_bulk.rejected, by_bulk.duplicates) == (by_live.rows, by_live.accepted, by_live.rejected, 0)
    assert dict(by_bulk.rejected) == {"envelope_violation": 4, "decode_failure": 1, "schema_violation": 1}
    assert (by_bulk.first_day, by_bulk.last_day) == (dt.date(2024, 1, 1), dt.date(2024, 2, 11))
    build(live), build(bulk_home)
    got = silver(bulk_home)
    assert got == silver(live)
    assert bad_rows(bulk_home) == bad_rows(live)
    # What the comparison covers: stitched persons, tokenised personal data, the contract.
    assert len({r["person_id"] for r in got}) == 60 and all("@" not in r["properties"] for r in got)
    assert {r["schema_version"] for r in got if r["event_name"] == "Order Completed"} == {"1"}
    # The bulk path wrote no late events and took nothing through the log.
    lake = Lake.of(bulk_home)
    assert not lake.exists("bronze.late_events") and not (bulk_home.root / "log").exists()


def test_a_failed_commit_stops_the_import_and_a_rerun_resumes_it_exactly(tmp_path, monkeypatch):
    path = tmp_path / "history.csv"
    history_csv(path)
    clean, crashed = new_home(tmp_path / "clean"), new_home(tmp_path / "crashed")
    first = import_file(clean, path, MAP, mode="bulk", chunk_rows=40)
    real = Lake.commit_files
    calls = []

    def failing(self, table, adds, schema, **kw):
        calls.append(table)
        if len(calls) == 5:
            raise OSError("disk full")
        real(self, table, adds, schema, **kw)

    monkeypatch.setattr(Lake, "commit_files", failing)
    with pytest.raises(OSError, match="disk full"):
        import_file(crashed, path, MAP, mode="bulk", chunk_rows=40)
    monkeypatch.setattr(Lake, "commit_files", real)
    assert bulk.record(crashed, bulk.import_id(path, "csv", "import", MAP, 40)) is None  # not finished
    again = import_file(crashed, path, MAP, mode="bulk", chunk_rows=40)
    assert 0 < again.resumed < again.chunks and again.restate
    assert (again.first_day, again.last_day) == (first.first_day, first.last_day)  # the committed chunks' days too

    def tables(h: Home) -> list[list[str]]:
        return [sorted(map(str, query(h, f"SELECT {cols} FROM {table}").to_pylist()))
                for table, cols in (("bronze.events", "* EXCLUDE (received_at)"), ("bronze.bad_rows", "* EXCLUDE (received_at, ds)"))]

    assert tables(crashed) == tables(clean)
    ids = query(crashed, "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM bronze.events").to_pylist()
    assert ids[0]["n"] == ids[0]["ids"]
    # The files of the chunks that never committed are in no Delta version: a vacuum takes them.
    lake = Lake.of(crashed)
    orphans = lake.vacuum("bronze.events", 0) + lake.vacuum("bronze.bad_rows", 0)
    assert orphans and all(p.endswith(".zstd.parquet") for p in orphans)
    assert tables(crashed) == tables(clean)


def test_reimports_are_deduplicated_against_bronze_and_within_the_file(tmp_path):
    home = new_home(tmp_path / "home")
    path = tmp_path / "history.csv"
    history_csv(path)
    first = import_file(home, path, MAP, mode="bulk", chunk_rows=100)
    bulk.mark_restated(home, first.import_id)
    # The same import again: every chunk is committed, nothing to do, nothing to restate.
    again = import_file(home, path, MAP, mode="bulk", chunk_rows=100)
    assert (again.resumed, again.accepted, again.restate) == (again.chunks, 0, False)
    # The file touched (another import): every event is in bronze already.
    os.utime(path, ns=(1, 1))
    touched = import_file(home, path, MAP, mode="bulk", chunk_rows=100)
    assert (touched.import_id != first.import_id, touched.accepted, touched.duplicates) == (True, 0, first.accepted)
    n = query(home, "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM bronze.events").to_pylist()[0]
    assert n == {"n": first.accepted, "ids": first.accepted}
    # Explicit event ids: a repeated id in the file, and ids the live path already stored.
    ids = tmp_path / "ids.csv"
    ids.write_text("id,user,event,ts\ne1,u1,Click,2024-03-01T12:00:00Z\ne2,u1,Click,2024-03-01T12:01:00Z\ne1,u1,Click,2024-03-01T12:05:00Z\n")
    m = Mapping(timestamp="ts", user_id="user", event="event", event_id="id")
    got = import_file(home, ids, m, source="crm", mode="bulk")
    assert (got.accepted, got.duplicates) == (2, 1)
    ts = query(home, "SELECT event_ts FROM bronze.events WHERE source = 'crm' AND event_id = 'e1'").column("event_ts").to_pylist()
    assert ts == [dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc)]  # the first row of the file wins
    ids.write_text("id,user,event,ts\ne3,u1,Click,2024-03-01T13:00:00Z\n")
    import_file(home, ids, m, source="crm", mode="live")
    run_stream(home)
    ids.write_text("id,user,event,ts\ne3,u1,Click,2024-03-01T13:00:00Z\ne4,u1,Click,2024-03-01T13:00:00Z\n")
    got = import_file(home, ids, m, source="crm", mode="bulk")
    assert (got.accepted, got.duplicates) == (1, 1)
    assert query(home, "SELECT count(*) AS n FROM bronze.events WHERE source = 'crm'").to_pylist() == [{"n": 4}]


def test_chunks_follow_event_days_so_a_file_ordered_by_customer_leaves_few_files(tmp_path):
    home = new_home(tmp_path / "home")
    path = tmp_path / "history.csv"
    history_csv(path, users=200)
    got = import_file(home, path, MAP, mode="bulk", chunk_rows=100)
    files = Lake.of(home).add_actions("bronze.events").num_rows
    days = len(Lake.of(home).ds_days("bronze.events"))
    assert got.chunks >= 7 and files <= days + got.chunks  # not chunks × days


def test_auto_takes_history_and_large_files_in_bulk_and_recent_small_files_live(tmp_path):
    now_us = 1_800_000_000_000_000
    assert choose(10, now_us - 3_600_000_000, now_us - 600_000_000) == "bulk"  # an hour old: late for the stream
    assert choose(10, now_us - 60_000_000, now_us - 600_000_000) == "live"
    assert choose(BULK_MIN_ROWS, now_us, now_us - 600_000_000) == "bulk"
    assert choose(0, None, now_us) == "live"
    home = new_home(tmp_path / "home")
    recent = tmp_path / "recent.csv"
    stamp = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    recent.write_text(f"user,event,ts\nu1,Click,{stamp}\n")
    assert import_file(home, recent, Mapping(timestamp="ts", user_id="user", event="event"), mode="auto").path == "live"
    old = tmp_path / "old.csv"
    old.write_text("user,event,ts\nu1,Click,1997-01-01T00:00:00Z\n")
    assert import_file(home, old, Mapping(timestamp="ts", user_id="user", event="event"), mode="auto").path == "bulk"


def test_cli_bulk_import_restates_the_affected_days_once(tmp_path):
    home = new_home(tmp_path / "home")
    path = tmp_path / "history.csv"
    history_csv(path, users=20)
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    cmd = [sys.executable, "-m", "headwater", "import", str(path), "--user-id", "user", "--anonymous-id", "anon", "--event", "event",
           "--event-type", "kind", "--timestamp", "ts", "--chunk-rows", "30", "--format", "json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["path"] == "bulk" and got["resumed"] == 0 and got["restated"]["silver.events"] == got["accepted"]
    assert (got["first_day"], got["last_day"]) == ("2024-01-01", "2024-01-22")
    assert query(home, "SELECT min(ds) AS first, max(ds) AS last FROM gold.active_users").to_pylist() == [
        {"first": dt.date(2024, 1, 1), "last": dt.date(2024, 1, 22)}]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    got = json.loads(again.stdout)
    assert (got["resumed"], got["accepted"], got["restated"]) == (got["chunks"], 0, None)
    live = subprocess.run(cmd[:-2] + ["--live", "--format", "json"], env=env, capture_output=True, text=True, timeout=300)
    assert live.returncode == 0 and json.loads(live.stdout)["path"] == "live"


def test_one_process_at_a_time_runs_an_import(tmp_path):
    import filelock

    from headwater.errors import ConflictError

    home = new_home(tmp_path / "home")
    path = tmp_path / "history.csv"
    history_csv(path, users=5)
    held = filelock.FileLock(str(bulk.record_path(home, bulk.import_id(path, "csv", "import", MAP, bulk.MIN_CHUNK_ROWS))) + ".lock")
    bulk.record_path(home, "x").parent.mkdir(parents=True)
    with held:
        with pytest.raises(ConflictError, match="running in another process"):
            import_file(home, path, MAP, mode="bulk")
    assert import_file(home, path, MAP, mode="bulk").accepted > 0


def test_default_chunks_are_equal_a_multiple_of_the_workers_and_bounded():
    assert bulk.chunk_size(10) == bulk.chunk_size(bulk.MIN_CHUNK_ROWS) == bulk.MIN_CHUNK_ROWS  # a small file: one chunk
    for rows in (200_000, 1_000_000, 1_200_000, 5_000_000, 5_000_001):
        size = bulk.chunk_size(rows)
        chunks = -(-rows // size)
        assert size <= bulk.CHUNK_ROWS and chunks % bulk.WORKERS == 0 and rows - (chunks - 1) * size > size - chunks
    assert bulk.chunk_size(200_000) == 100_000 and bulk.chunk_size(1_200_000) == 300_000
