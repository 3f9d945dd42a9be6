"""A full disk during a log append, a Delta commit of the stream, and a compaction: a clear
error naming ENOSPC (a :class:`TransientError`, or a 503 saying so), nothing half-written,
and once space returns the retry succeeds with every event in bronze exactly once.

The disk is a 64 MB tmpfs holding ``HEADWATER_HOME`` (or the injected full disk of
:mod:`tests.faults.enospc` where mounting is refused: fixture ``disk``)."""

from __future__ import annotations

import base64
import errno
import os
import sqlite3
import subprocess
import uuid

import httpx
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.errors import HeadwaterError, TransientError
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.log import Append, open_log
from headwater.runtime import free_port, wait_http
from headwater.stream.processor import BronzeStream, StreamConfig
from tests.helpers import query, run_stream

WRITE_KEY = "wk-disk-full-0123456789"


def names_enospc(e: BaseException) -> bool:
    """A clear disk-full error: ours naming ENOSPC, or the OS's own ENOSPC."""
    return (isinstance(e, HeadwaterError) and "disk full (ENOSPC)" in str(e)) or getattr(e, "errno", None) == errno.ENOSPC


def batch(n: int, pad: int = 2000) -> tuple[list[str], dict]:
    """A Segment batch of ``n`` tracks with fresh message ids and ``pad`` random characters
    each (incompressible: it takes its room on disk)."""
    ids = [f"m-{uuid.uuid4().hex}" for _ in range(n)]
    items = [{"type": "track", "event": "Product Viewed", "userId": f"u{i % 7}", "messageId": mid,
              "timestamp": "2024-03-01T12:00:00Z", "properties": {"pad": base64.b64encode(os.urandom(pad)).decode()}}
             for i, mid in enumerate(ids)]
    return ids, {"batch": items}


def bronze_ids(home: Home) -> list[str]:
    return query(home, "SELECT event_id FROM bronze.events").column("event_id").to_pylist()


def assert_log_intact(home: Home) -> None:
    conn = sqlite3.connect(home.settings.log_url.removeprefix("sqlite://"))
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


def test_full_disk_during_log_appends_is_a_503_then_the_retry_stores_it_once(disk):
    home = Home(disk.root / "home")
    home.root.mkdir()
    home.add_source("web", WRITE_KEY)
    port = free_port()
    proc = subprocess.Popen([*disk.headwater(), "collector", "--port", str(port)],
                            # admission control off (it would refuse before the disk does): the append itself meets ENOSPC
                            env={**os.environ, "HEADWATER_HOME": str(home.root), "HEADWATER_COLLECTOR_MAX_DISK_USED": "1.0"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    accepted: list[str] = []
    refused: list[tuple[list[str], dict]] = []
    try:
        wait_http(url + "/health", 30, proc)
        with httpx.Client(base_url=url, auth=(WRITE_KEY, ""), timeout=30) as http:
            for _ in range(3):
                ids, body = batch(50)
                assert http.post("/v1/batch", json=body).status_code == 200
                accepted += ids
            log = open_log(home.settings.log_url)
            before = log.end_offsets("events")
            disk.fill()
            # The WAL may reuse room a checkpoint freed: send until the disk really refuses.
            for _ in range(40):
                ids, body = batch(50)
                r = http.post("/v1/batch", json=body)
                if r.status_code == 200:
                    accepted += ids
                    continue
                assert r.status_code == 503, r.text
                assert "disk full (ENOSPC)" in r.json()["message"], r.text
                refused.append((ids, body))
                if len(refused) == 3:
                    break
            assert refused, "the full disk never refused an append"
            stored = sum(log.end_offsets("events").values()) - sum(before.values())
            assert stored == len(accepted) - 150  # a refused request stored nothing, not even part of it
            assert_log_intact(home)
            disk.free()
            for ids, body in refused:  # the SDK's retry
                assert http.post("/v1/batch", json=body).status_code == 200
                accepted += ids
            log.close()
    finally:
        proc.terminate()
        proc.wait(15)
    run_stream(home)
    got = bronze_ids(home)
    assert sorted(got) == sorted(accepted)  # none lost, none twice


def log_with_events(home: Home, batches: int, n: int = 200, pad: int = 4000) -> list[str]:
    """``batches`` appends of ``n`` events (each ``pad`` random bytes of properties) to the log."""
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", home.settings.log.partitions)
    ids = []
    for b in range(batches):
        rows = [{"event_id": f"e{b}-{i}", "event_type": "track", "event_name": "Product Viewed", "user_id": f"u{i % 9}",
                 "event_ts": pa.scalar(1709294400000000 + i, pa.timestamp("us", "UTC")).as_py(),
                 "received_at": pa.scalar(1709294400000000 + i, pa.timestamp("us", "UTC")).as_py(),
                 "source": "test", "properties": base64.b64encode(os.urandom(pad)).decode(),
                 "ds": pa.scalar(19783, pa.date32()).as_py()} for i in range(n)]
        log.append([Append("events", b % home.settings.log.partitions, pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))])
        ids += [r["event_id"] for r in rows]
    log.close()
    return ids


def readable(home: Home) -> dict[str, int]:
    """Every table of the lake loads and reads in full (no corruption): rows per table."""
    lake = Lake.of(home)
    return {t: DeltaTable(lake.uri(t)).to_pyarrow_table().num_rows for t in lake.tables()}


def test_full_disk_during_a_delta_commit_fails_the_batch_clearly_and_the_restart_is_exactly_once(disk):
    home = Home(disk.root / "home")
    ids = log_with_events(home, 8)
    stream = BronzeStream(home, StreamConfig(max_records_per_partition=200, compact_every=0))
    assert stream.run_once() is not None
    disk.fill(leave=256 * 1024)  # room for the checkpoint's small files, not for a batch's Parquet
    with pytest.raises(Exception) as failed:
        while stream.run_once() is not None:
            pass
    assert names_enospc(failed.value), repr(failed.value)
    if disk.mounted:  # the small checkpoint files fit: it is the Delta commit that failed
        assert isinstance(failed.value, TransientError), repr(failed.value)
    stream.log.close()
    readable(home)
    disk.free()
    run_stream(home)  # the supervisor's restart: recovery re-runs the failed batch
    assert sorted(bronze_ids(home)) == sorted(ids)
    assert_log_intact(home)


def test_full_disk_during_compaction_is_a_clear_error_and_changes_nothing(disk):
    home = Home(disk.root / "home")
    ids = log_with_events(home, 12, n=100, pad=2000)
    stream = BronzeStream(home, StreamConfig(max_records_per_partition=25, compact_every=0))
    while stream.run_once() is not None:  # one small file per batch
        pass
    lake = Lake.of(home)
    version, before = lake.version("bronze.events"), readable(home)
    files = len(lake.add_actions("bronze.events"))
    assert files >= 5
    disk.fill(leave=64 * 1024)
    with pytest.raises(TransientError, match=r"disk full \(ENOSPC\)"):
        stream.compact()
    assert lake.version("bronze.events") == version and readable(home) == before
    disk.free()
    lake.vacuum("bronze.events", 0)  # the half-written files of the failed compaction
    stream.compact()
    assert len(lake.add_actions("bronze.events")) < files
    assert readable(home) == before and sorted(bronze_ids(home)) == sorted(ids)
    stream.log.close()


def test_full_disk_during_a_checkpoint_write_keeps_the_old_file_and_names_enospc(disk):
    """``files.write_atomic`` (offsets, state, dedup snapshots): a clear TransientError, the
    previous file intact, no temporary file left holding space; the write works once space returns."""
    from headwater.files import write_atomic

    if not disk.mounted:
        pytest.skip("needs a real small filesystem: the OS's ENOSPC is what is under test")
    target = disk.root / "checkpoint" / "offsets" / "7"
    write_atomic(target, b"old")
    disk.fill()
    with pytest.raises(TransientError, match="disk full") as e:
        write_atomic(target, b"x" * (2 << 20))
    assert e.value.retry_after_s and str(target) in str(e.value)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["7"]
    disk.free()
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
