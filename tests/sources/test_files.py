"""headwater import: real CSV / JSON lines / Parquet files → the real event log → the real
bronze stream (live), or straight into bronze (bulk): the same bronze either way; bad rows
named by row/line, column and rule; re-imports deduplicated."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.sources.files import detect_format, import_file
from headwater.sources.mapping import Mapping

UTC = dt.timezone.utc
CSV = """user,anon,event,ts,price,email
u1,,Order Completed,2024-03-01T12:00:00Z,3.5,ann@example.com
,a2,Product Viewed,2024-03-01 13:30:00,1,
u3,a3,Order Completed,2024-03-02T00:30:00+02:00,2,
,,Order Completed,2024-03-01T12:00:00Z,4,
u5,,Order Completed,yesterday,4,
u6,,,2024-03-01T12:00:00Z,4,
u7,,"broken,line",2024-03-01T12:00:00Z,4,,extra
"""
CSV_MAP = Mapping(timestamp="ts", user_id="user", anonymous_id="anon", event="event")


@pytest.fixture(params=["live", "bulk"])
def mode(request) -> str:
    """The import path: every test using it passes on both, with the same expectations."""
    return request.param


def test_csv_import_lands_in_bronze_with_tokens_and_bad_rows(home, tmp_path, token, bronze, mode):
    path = tmp_path / "export.csv"
    path.write_text(CSV)
    counts = import_file(home, path, CSV_MAP, source="shop-export", mode=mode)
    assert (counts.accepted, counts.rejected) == (3, {"envelope_violation": 3, "decode_failure": 1})

    got = bronze("SELECT * FROM bronze.events ORDER BY event_ts")
    assert [(r["event_name"], r["user_id"], r["anonymous_id"], r["event_ts"]) for r in got] == [
        ("Order Completed", token("u1"), None, dt.datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("Product Viewed", None, token("a2"), dt.datetime(2024, 3, 1, 13, 30, tzinfo=UTC)),
        ("Order Completed", token("u3"), token("a3"), dt.datetime(2024, 3, 1, 22, 30, tzinfo=UTC)),
    ]
    assert {r["source"] for r in got} == {"shop-export"} and {r["event_type"] for r in got} == {"track"}
    assert [r["ds"] for r in got] == [dt.date(2024, 3, 1)] * 3
    # Unmapped columns are the properties; the email goes through the default PII policy.
    props = json.loads(got[0]["properties"])
    assert props == {"price": 3.5, "email": token("ann@example.com")}
    assert json.loads(got[0]["context"])["import"] == {"file": "export.csv"}

    bad = bronze("SELECT error_type, reason, payload, protocol FROM bronze.bad_rows ORDER BY reason")
    reasons = [b["reason"] for b in bad]
    assert reasons == [
        "line 8: TOO MANY COLUMNS: Expected Number of Columns: 6 Found: 7",
        'row 4: column "user" (user id) and column "anon" (anonymous id) are both empty (a user id or an anonymous id is required)',
        'row 5: column "ts" (timestamp): "yesterday" is not a timestamp (expected ISO 8601, e.g. 2024-03-01T12:00:00Z)',
        'row 6: column "event" (event name): empty (track events need a non-empty event name)',
    ]
    assert [b["error_type"] for b in bad] == ["decode_failure"] + ["envelope_violation"] * 3
    assert {b["protocol"] for b in bad} == {"import"}
    # The bad row keeps the input row, its identifier tokenised.
    assert json.loads(bad[2]["payload"])["user"] == token("u5")
    assert "u5" not in bad[2]["payload"]


def test_reimport_is_deduplicated_and_identical_rows_stay_distinct(home, tmp_path, bronze, mode):
    path = tmp_path / "dupes.csv"
    path.write_text("user,event,ts\nu1,Click,2024-03-01T12:00:00Z\nu1,Click,2024-03-01T12:00:00Z\nu2,Click,2024-03-01T12:00:00Z\n")
    m = Mapping(timestamp="ts", user_id="user", event="event")
    first = import_file(home, path, m, mode=mode)
    assert first.accepted == 3
    assert bronze("SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM bronze.events") == [{"n": 3, "ids": 3}]
    # The same file again (say, after a crash mid-import): same derived ids, removed by dedup.
    import_file(home, path, m, mode=mode)
    assert bronze("SELECT count(*) AS n FROM bronze.events") == [{"n": 3}]
    # Reordered rows of the same export keep their ids too (ids hash values, not positions).
    path.write_text("user,event,ts\nu2,Click,2024-03-01T12:00:00Z\nu1,Click,2024-03-01T12:00:00Z\nu1,Click,2024-03-01T12:00:00Z\n")
    import_file(home, path, m, mode=mode)
    assert bronze("SELECT count(*) AS n FROM bronze.events") == [{"n": 3}]


def test_parquet_with_epoch_ms_json_properties_types_and_event_ids(home, tmp_path, token, bronze, mode):
    path = tmp_path / "export.parquet"
    pq.write_table(
        pa.table({
            "id": ["e1", "e2", "e3", "e4"],
            "kind": ["track", "identify", "PAGE", "bogus"],
            "who": [101, 102, 103, 104],
            "name": ["Signed Up", None, "Home", "x"],
            "at_ms": [1709294400123, 1709294401000, 1709380800000, 1709294400000],
            "props": ['{"plan":"pro"}', '{"email":"bob@example.com"}', "[1,2]", "{}"],
        }),
        path,
    )
    m = Mapping(timestamp="at_ms", timestamp_unit="ms", user_id="who", event="name", event_type="kind", event_id="id", properties="props")
    counts = import_file(home, path, m, mode=mode)
    assert counts.accepted == 2 and sum(counts.rejected.values()) == 2
    got = bronze("SELECT * FROM bronze.events ORDER BY event_id")
    assert [(r["event_id"], r["event_type"], r["event_name"], r["user_id"]) for r in got] == [
        ("e1", "track", "Signed Up", token("101")),
        ("e2", "identify", None, token("102")),
    ]
    assert got[0]["event_ts"] == dt.datetime(2024, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert json.loads(got[0]["properties"]) == {"plan": "pro"}
    assert json.loads(got[1]["properties"]) == {"email": token("bob@example.com")}
    reasons = sorted(r["reason"] for r in bronze("SELECT reason FROM bronze.bad_rows"))
    assert reasons == [
        'row 3: column "props" (properties): not a JSON object',
        'row 4: column "kind" (event type): "bogus" is not one of track, identify, alias, page, screen, group',
    ]



def test_parquet_rows_are_numbered_in_file_order_across_row_groups_even_with_a_file_row_number_column(home, tmp_path, bronze):
    # Row numbers come from the reader's file_row_number (a parallel scan); a file with a
    # column of that name is numbered by row_number() instead, and keeps the column as a property.
    bad = {3, 2500, 4999}
    for name in ("numbered.parquet", "own_column.parquet"):
        table = pa.table({
            "user": [None if i in bad else f"u{i}" for i in range(1, 5001)],
            "ts": [dt.datetime(2024, 3, 1, tzinfo=UTC) + dt.timedelta(seconds=i) for i in range(1, 5001)],
        })
        if name == "own_column.parquet":
            table = table.append_column("file_row_number", pa.array(range(7, 5007)))
        pq.write_table(table, tmp_path / name, row_group_size=1000)
        counts = import_file(home, tmp_path / name, Mapping(timestamp="ts", user_id="user", event="user"), mode="bulk")
        assert (counts.accepted, counts.rejected["envelope_violation"]) == (5000 - len(bad), len(bad))
    reasons = sorted(r["reason"].split(":")[0] for r in bronze("SELECT reason FROM bronze.bad_rows"))
    assert reasons == sorted(f"row {i}" for i in bad for _ in range(2))
    props = bronze("SELECT properties FROM bronze.events WHERE user_id IS NOT NULL AND properties LIKE '%file_row_number%' LIMIT 1")
    assert props and json.loads(props[0]["properties"])["file_row_number"] >= 7


def test_jsonl_import_names_malformed_lines_and_keeps_good_ones(home, tmp_path, token, bronze, mode):
    path = tmp_path / "events.jsonl"
    lines = [
        '{"uid": "u1", "event": "Signed Up", "time": "01/03/2024 12:00", "plan": "pro", "n": 2}',
        "",
        "{not json",
        '["an", "array"]',
        '{"uid": 7, "event": "Logged In", "time": "02/03/2024 08:15"}',
        '{"uid": "u9", "event": "Logged In", "time": "2024-03-02"}',
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"uid": "u\xff", "event": "x", "time": "01/03/2024 12:00"}')
    m = Mapping(timestamp="time", timestamp_format="%d/%m/%Y %H:%M", user_id="uid", event="event")
    counts = import_file(home, path, m, mode=mode)
    assert counts.rows == 6 and counts.accepted == 2
    got = bronze("SELECT user_id, event_ts, properties FROM bronze.events ORDER BY event_ts")
    assert got == [
        {"user_id": token("u1"), "event_ts": dt.datetime(2024, 3, 1, 12, tzinfo=UTC), "properties": '{"plan":"pro","n":2}'},
        {"user_id": token("7"), "event_ts": dt.datetime(2024, 3, 2, 8, 15, tzinfo=UTC), "properties": "{}"},
    ]
    bad = bronze("SELECT error_type, reason, payload FROM bronze.bad_rows ORDER BY reason")
    assert [(b["error_type"], b["reason"]) for b in bad] == [
        ("decode_failure", "line 3: not valid JSON (each line must be one JSON object)"),
        ("decode_failure", "line 4: JSON array, expected an object"),
        ("envelope_violation", 'line 6: column "time" (timestamp): "2024-03-02" is not a timestamp (expected format %d/%m/%Y %H:%M)'),
        ("decode_failure", "line 7: invalid UTF-8 (log lines must be UTF-8 text)"),
    ]
    assert bad[0]["payload"] == "{not json"
    assert token("u9") in bad[2]["payload"] and '"u9"' not in bad[2]["payload"]


def test_mapping_errors_name_the_option_and_import_nothing(home, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("user,ts,event\nu1,1709294400,Click\n")
    with pytest.raises(ValueError, match=r"column 'who' \(user id\) is not in x.csv; its columns are 'user', 'ts', 'event'"):
        import_file(home, path, Mapping(timestamp="ts", user_id="who", event="event"))
    with pytest.raises(ValueError, match=r"timestamp_unit: column 'ts' holds numbers \(BIGINT\): give the epoch unit"):
        import_file(home, path, Mapping(timestamp="ts", user_id="user", event="event"))
    with pytest.raises(ValueError, match="user id column, the anonymous id column, or both"):
        Mapping(timestamp="ts", event="e")
    with pytest.raises(ValueError, match="timestamp_unit: must be one of s, ms, us"):
        Mapping(timestamp="ts", user_id="u", event="e", timestamp_unit="h")
    with pytest.raises(ValueError, match="event: name the event name column"):
        Mapping(timestamp="ts", user_id="u")
    with pytest.raises(ValueError, match="timestamp_format, timestamp_unit: give one or the other"):
        Mapping(timestamp="ts", user_id="u", event="e", timestamp_unit="s", timestamp_format="%s")
    with pytest.raises(ValueError, match="cannot tell the format of 'x.xlsx'"):
        detect_format(tmp_path / "x.xlsx")
    assert not (home.root / "log" / "log.db").exists() or not _events_in_log(home)


def _events_in_log(home) -> int:
    from headwater.errors import NotFoundError
    from headwater.log import open_log

    try:
        return sum(open_log(home.settings.log_url).end_offsets("events").values())
    except NotFoundError:
        return 0


def test_cli_import_prints_counts(home, tmp_path, token, bronze):
    path = tmp_path / "e.csv.gz"
    import gzip

    path.write_bytes(gzip.compress(b"user,event,ts,amount\nu1,Paid,1709294400,9.5\nu2,Paid,,1\n"))
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    out = subprocess.run(
        [sys.executable, "-m", "headwater", "import", str(path), "--user-id", "user", "--event", "event", "--timestamp", "ts", "--timestamp-unit", "s", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    # 2024 is history: the bulk path, then the affected days rebuilt.
    assert {k: v for k, v in got.items() if k not in ("import_id", "restated")} == {
        "file": str(path), "rows": 2, "accepted": 1, "rejected": 1, "rejected_by_type": {"envelope_violation": 1}, "duplicates": 0,
        "path": "bulk", "chunks": 1, "resumed": 0, "first_day": "2024-03-01", "last_day": "2024-03-01"}
    assert got["restated"]["silver.events"] == 1
    assert bronze("SELECT user_id, event_ts FROM bronze.events") == [{"user_id": token("u1"), "event_ts": dt.datetime(2024, 3, 1, 12, tzinfo=UTC)}]
    out = subprocess.run([sys.executable, "-m", "headwater", "import", str(path), "--user-id", "nope", "--event", "event", "--timestamp", "ts"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "column 'nope' (user id) is not in e.csv.gz" in out.stderr


def test_the_demo_dataset_imports_whole(home, bronze, mode):
    """The real ecom.csv.gz (31,106 events of 600 users, Jan-Jun 2024) through import and stream."""
    from importlib import resources

    path = resources.files("headwater.demo") / "data" / "ecom.csv.gz"
    counts = import_file(home, path, Mapping(timestamp="timestamp", user_id="user_id", event="event", platform="platform"), source="ecom", mode=mode)
    assert (counts.rows, counts.accepted, sum(counts.rejected.values())) == (31_106, 31_106, 0)
    got = bronze("SELECT count(*) AS n, count(DISTINCT event_id) AS ids, count(DISTINCT user_id) AS users, min(ds) AS first, max(ds) AS last FROM bronze.events")
    assert got == [{"n": 31_106, "ids": 31_106, "users": 600, "first": dt.date(2024, 1, 4), "last": dt.date(2024, 6, 29)}]
    props = json.loads(bronze("SELECT properties FROM bronze.events LIMIT 1")[0]["properties"])
    assert set(props) == {"session_id", "acquisition_channel", "user_cohort", "user_lifecycle"}
    platforms = bronze("SELECT platform, count(*) AS n FROM bronze.events GROUP BY ALL ORDER BY platform")
    assert [(p["platform"], p["n"]) for p in platforms] == [("desktop", 16_146), ("mobile", 11_353), ("tablet", 3_607)]


def test_a_failed_log_append_stops_the_import_and_a_rerun_completes_it(home, tmp_path, bronze):
    from headwater.log.sqlite import SqliteLog

    class FailingLog(SqliteLog):
        appends = 0

        def append(self, appends):
            FailingLog.appends += 1
            if FailingLog.appends == 2:
                raise OSError("disk full")
            super().append(appends)

    path = tmp_path / "e.csv"
    path.write_text("user,event,ts\n" + "".join(f"u{i},Click,2024-03-01T12:00:{i:02d}Z\n" for i in range(10)))
    m = Mapping(timestamp="ts", user_id="user", event="event")
    with pytest.raises(OSError, match="disk full"):
        import_file(home, path, m, batch_rows=4, log=FailingLog.from_url(home.settings.log_url))
    assert 0 < _events_in_log(home) < 10  # the batches before the failure are stored
    assert import_file(home, path, m, batch_rows=4).accepted == 10  # the rerun: same ids
    assert bronze("SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM bronze.events") == [{"n": 10, "ids": 10}]


def test_csv_ids_stay_text_and_late_type_changes_do_not_reject_good_rows(home, tmp_path, token, bronze, mode):
    """DuckDB sniffs column types from a sample: an id column of digits must not become a
    number ("007" → 7), and a property that turns non-numeric after the sample must not turn
    its (good) row into a conversion reject."""
    n = 25_000  # beyond DuckDB's sniffing sample
    rows = [f"00{i},Click,2024-03-01T12:00:00Z,{i}" for i in range(n)] + ["u-late,Click,2024-03-01T12:00:01Z,n/a"]
    path = tmp_path / "late.csv"
    path.write_text("user,event,ts,qty\n" + "\n".join(rows) + "\n")
    counts = import_file(home, path, Mapping(timestamp="ts", user_id="user", event="event"), mode=mode)
    assert (counts.accepted, sum(counts.rejected.values())) == (n + 1, 0)
    got = bronze(f"SELECT properties FROM bronze.events WHERE user_id IN ('{token('007')}', '{token('u-late')}') ORDER BY event_ts")
    assert [json.loads(r["properties"]) for r in got] == [{"qty": 7}, {"qty": "n/a"}]


def test_derived_ids_number_identical_rows_counting_rows_with_ids_and_trimmed_values(home, tmp_path, token, bronze, mode):
    # The id rule re-imports rely on (mapping module doc): md5 of source, mapped values
    # (trimmed: a no-break space is trimmed too) and occurrence number among identical rows,
    # in row order — rows that carry their own event id count as occurrences too.
    path = tmp_path / "ids.csv"
    path.write_text("eid,user,event,ts\ne1,u1,Click,2024-03-01T12:00:00Z\n,u1,Click,2024-03-01T12:00:00Z\n,u1,Click,2024-03-01T12:00:00Z\n"
                    ", u2\u00a0,Click,2024-03-01T12:00:00Z\n,u2,Click,2024-03-01T12:00:00Z\n", encoding="utf-8")
    counts = import_file(home, path, Mapping(timestamp="ts", user_id="user", event="event", event_id="eid"), source="src", mode=mode)
    assert counts.accepted == 5

    def derived(user: str, occurrence: int) -> str:
        h = hashlib.md5("\x1f".join(["src", user, "track", "Click", "1709294400000000", "{}", str(occurrence)]).encode()).hexdigest()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    got = {(r["event_id"], r["user_id"]) for r in bronze("SELECT event_id, user_id FROM bronze.events")}
    assert got == {("e1", token("u1")), (derived("u1", 2), token("u1")), (derived("u1", 3), token("u1")),
                   (derived("u2", 1), token("u2")), (derived("u2", 2), token("u2"))}
