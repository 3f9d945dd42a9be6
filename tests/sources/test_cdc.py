"""Postgres CDC against a real PostgreSQL server: inserts, updates (tracked and untracked
columns), deletes, re-inserts; SIGKILL of the CDC reader mid-stream and crashes at each step
of the commit protocol; silver.dim_account must equal the table's history exactly.

The oracle is independent of logical decoding: a row trigger writes every change to an
``audit`` table (not published), and ``pg_xact_commit_timestamp(xmin)`` gives each audit
row's commit time (``track_commit_timestamp=on``)."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from headwater.errors import NotFoundError
from headwater.lake.store import Lake
from headwater.sources.cdc import scd2
from headwater.sources.cdc.pgoutput import parse_lsn
from headwater.sources.cdc.reader import CdcConfig, CdcReader
from tests.helpers import query

TRACKED = ("email", "plan", "seats", "country")
SCHEMA = """
CREATE TABLE accounts (
    id bigint PRIMARY KEY, email text NOT NULL, plan text, seats int, country text,
    last_seen_at timestamptz
);
CREATE TABLE audit (n bigserial PRIMARY KEY, op text, id bigint, email text, plan text, seats int, country text);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO audit (op, id) VALUES ('delete', OLD.id);
        RETURN OLD;
    END IF;
    INSERT INTO audit (op, id, email, plan, seats, country) VALUES (lower(TG_OP), NEW.id, NEW.email, NEW.plan, NEW.seats, NEW.country);
    RETURN NEW;
END $$;
CREATE TRIGGER accounts_audit AFTER INSERT OR UPDATE OR DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION audit_fn();
"""


@pytest.fixture
def dsn(postgres):
    dsn = postgres.create_database(f"cdc_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    return dsn


def slot_of(dsn: str) -> str:
    """Slots are cluster-wide: each test database gets its own (named like it)."""
    return dsn.rsplit("dbname=", 1)[1]


def config(dsn: str, **kw) -> CdcConfig:
    return CdcConfig(dsn, "accounts", tracked=TRACKED, slot=slot_of(dsn), **kw)  # email: tokenised by default


def workload(dsn: str, txns: int, seed: int, first_id: int = 1) -> None:
    """``txns`` transactions of 1–3 random statements: inserts, tracked and untracked
    updates, several updates of one row in one transaction, deletes, delete + re-insert."""
    rnd = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as conn:
        next_id = first_id + conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        for _ in range(txns):
            with conn.transaction():
                for _ in range(rnd.randint(1, 3)):
                    ids = [r[0] for r in conn.execute("SELECT id FROM accounts ORDER BY id")]
                    action = rnd.choice(["insert"] * 3 + ["plan", "seats", "touch", "email", "delete", "reinsert", "twice"] if ids else ["insert"])
                    target = rnd.choice(ids) if ids else None
                    if action == "insert":
                        conn.execute("INSERT INTO accounts VALUES (%s, %s, 'free', 1, %s, now())", (next_id, f"user{next_id}@example.com", rnd.choice(["DE", "FR", None])))
                        next_id += 1
                    elif action == "plan":
                        conn.execute("UPDATE accounts SET plan = %s WHERE id = %s", (rnd.choice(["free", "pro", "team"]), target))
                    elif action == "seats":
                        conn.execute("UPDATE accounts SET seats = seats + 1 WHERE id = %s", (target,))
                    elif action == "touch":  # untracked column only: no new version
                        conn.execute("UPDATE accounts SET last_seen_at = now() WHERE id = %s", (target,))
                    elif action == "email":
                        conn.execute("UPDATE accounts SET email = %s WHERE id = %s", (f"new{rnd.randint(0, 999)}@example.com", target))
                    elif action == "delete":
                        conn.execute("DELETE FROM accounts WHERE id = %s", (target,))
                    elif action == "reinsert":
                        conn.execute("DELETE FROM accounts WHERE id = %s", (target,))
                        conn.execute("INSERT INTO accounts VALUES (%s, %s, 'pro', 5, 'US', now())", (target, f"back{target}@example.com"))
                    else:  # two updates of one row in one transaction: one version
                        conn.execute("UPDATE accounts SET plan = 'team' WHERE id = %s", (target,))
                        conn.execute("UPDATE accounts SET seats = 99 WHERE id = %s", (target,))


def expected_history(dsn: str, token, since: int = 0, initial: tuple[list[tuple], dt.datetime] | None = None) -> list[tuple]:
    """SCD2 of the audit log, computed here in Python (commit granularity): audit rows
    after ``since``, on top of ``initial`` = (rows ``(id, email, plan, seats, country)``
    of a snapshot, its time)."""
    with psycopg.connect(dsn) as conn:
        audit = conn.execute(
            "SELECT id, op, email, plan, seats, country, xmin::text, pg_xact_commit_timestamp(xmin) FROM audit WHERE n > %s ORDER BY n",
            (since,),
        ).fetchall()
    last: dict[tuple, tuple] = {}  # (id, xid) -> last change of the key in the transaction
    order: list[tuple] = []
    for id_, op, email, plan, seats, country, xid, ts in audit:
        if (id_, xid) not in last:
            order.append((id_, xid))
        last[(id_, xid)] = (op, (token(email) if email else None, plan, seats, country), ts)
    versions: dict[int, list[dict]] = {}
    for id_, email, plan, seats, country in initial[0] if initial else []:
        versions[id_] = [{"vals": (token(email), plan, seats, country), "valid_from": initial[1], "valid_to": None, "deleted": False}]
    for id_, xid in order:
        op, vals, ts = last[(id_, xid)]
        rows = versions.setdefault(id_, [])
        cur = rows[-1] if rows and rows[-1]["valid_to"] is None else None
        if op == "delete":
            if cur:
                cur.update(valid_to=ts, deleted=True)
        elif cur is None or cur["vals"] != vals:
            if cur:
                cur["valid_to"] = ts
            rows.append({"vals": vals, "valid_from": ts, "valid_to": None, "deleted": False})
    return sorted(
        (id_, *v["vals"], v["valid_from"], v["valid_to"], v["valid_to"] is None, v["deleted"])
        for id_, rows in versions.items() for v in rows
    )


def dim_rows(home) -> list[tuple]:
    got = query(home, "SELECT * FROM silver.dim_account").to_pylist()
    return sorted((r["id"], *(r[c] for c in TRACKED), r["valid_from"], r["valid_to"], r["is_current"], r["deleted"]) for r in got)


def assert_bronze_exact(home, dsn: str) -> None:
    """bronze.cdc_accounts holds every row change once: one per audit row, no (lsn, seq) twice."""
    with psycopg.connect(dsn) as conn:
        audited = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
    got = query(home, "SELECT count(*) AS n, count(DISTINCT (commit_lsn, seq)) AS d FROM bronze.cdc_accounts").to_pylist()[0]
    assert got == {"n": audited, "d": audited}


def test_sigkill_of_the_reader_mid_stream_loses_and_doubles_nothing(home, dsn, token):
    reader = CdcReader(home, config(dsn))
    reader.setup()
    reader.close()
    workload(dsn, 40, seed=1)
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    args = [sys.executable, "-m", "headwater", "cdc", "run", "--dsn", dsn, "--table", "accounts",
            "--track", ",".join(TRACKED), "--slot", slot_of(dsn), "--interval", "0.05"]
    proc = subprocess.Popen(args + ["--max-changes", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lake, bronze = Lake.of(home), "bronze.cdc_accounts"
    try:
        deadline = time.monotonic() + 90
        while (lake.committed_batch(bronze, f"cdc:{slot_of(dsn)}") is None or lake.version(bronze) < 3) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        workload(dsn, 5, seed=2)  # changes arrive while it reads
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with psycopg.connect(dsn) as conn:
        behind = conn.execute(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes(%s, NULL, NULL, 'proto_version', '1', 'publication_names', 'headwater_accounts')",
            (slot_of(dsn),),
        ).fetchone()[0]
    assert behind > 0, "the reader finished before it was killed: nothing was mid-stream"

    workload(dsn, 40, seed=3)  # and while it is down
    done = subprocess.run(args + ["--available-now"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_bronze_exact(home, dsn)
    assert dim_rows(home) == expected_history(dsn, token)


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", ["bronze", "dim", "confirm"])
def test_crash_after_each_commit_step_then_restart(home, dsn, token, monkeypatch, step):
    first = CdcReader(home, config(dsn, max_changes=3))
    first.setup()
    workload(dsn, 20, seed=4)
    assert first.poll() > 0
    # Crash on the second batch right after step `step` committed.
    if step == "bronze":
        monkeypatch.setattr(scd2, "apply", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    elif step == "dim":
        real = scd2.apply
        monkeypatch.setattr(scd2, "apply", lambda *a, **k: (real(*a, **k), (_ for _ in ()).throw(Crash())))
    else:
        monkeypatch.setattr(CdcReader, "confirm", lambda self, lsn: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        first.poll()
    first.close()
    monkeypatch.undo()

    second = CdcReader(home, config(dsn, max_changes=3))
    second.run(available_now=True)
    workload(dsn, 10, seed=5)
    second.run(available_now=True)
    second.close()
    assert_bronze_exact(home, dsn)
    assert dim_rows(home) == expected_history(dsn, token)


def test_bronze_records_and_rebuild_equals_incremental(home, dsn, token):
    reader = CdcReader(home, config(dsn))
    reader.setup()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts VALUES (1, 'ann@example.com', 'free', 1, 'DE', now())")
        conn.execute("UPDATE accounts SET plan = 'pro' WHERE id = 1")
        conn.execute("UPDATE accounts SET last_seen_at = now() WHERE id = 1")
        conn.execute("DELETE FROM accounts WHERE id = 1")
    assert reader.run(available_now=True, compact_every=1) == 4
    # Traffic on a table outside the publication: the slot is still confirmed past it.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE other (x int)")
        conn.execute("INSERT INTO other SELECT generate_series(1, 1000)")
        flushed = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
    assert reader.run(available_now=True) == 0
    assert reader.confirmed_lsn() >= parse_lsn(flushed)
    recs = query(home, "SELECT op, before, after, commit_ts, ds FROM bronze.cdc_accounts ORDER BY commit_lsn, seq").to_pylist()
    assert [r["op"] for r in recs] == ["insert", "update", "update", "delete"]
    import json

    assert json.loads(recs[0]["after"])["email"] == token("ann@example.com")  # tokenised at rest
    assert recs[0]["before"] is None and recs[3]["after"] is None
    assert json.loads(recs[1]["before"])["plan"] == "free" and json.loads(recs[1]["after"])["plan"] == "pro"
    assert recs[0]["ds"] == recs[0]["commit_ts"].date()
    dim = query(home, "SELECT plan, valid_to IS NULL AS open, is_current, deleted FROM silver.dim_account ORDER BY valid_from").to_pylist()
    assert dim == [
        {"plan": "free", "open": False, "is_current": False, "deleted": False},
        {"plan": "pro", "open": False, "is_current": False, "deleted": True},
    ]
    incremental = dim_rows(home)
    reader.close()
    # The batch layer's model of the dimension: rebuilt from bronze alone (no Postgres), same table.
    from headwater.models.dag import dim_models
    from headwater.models.run import run_model

    assert {m.table: run_model(home, m, dt.date.today(), dt.date.today()) for m in dim_models(home)} == {"silver.dim_account": 2}
    assert dim_rows(home) == incremental == expected_history(dsn, token)


def test_configuration_errors_name_the_option(home, dsn, postgres):
    with pytest.raises(NotFoundError, match="table: 'nope' does not exist"):
        CdcReader(home, CdcConfig(dsn, "nope"))
    with pytest.raises(ValueError, match="tracked: column 'tier' is not in 'accounts'; its columns are id, email"):
        CdcReader(home, CdcConfig(dsn, "accounts", tracked=("tier",)))
    # Identifier columns are tokenised by the default PII policy's names unless told otherwise.
    assert CdcReader(home, CdcConfig(dsn, "accounts")).tokenize == {"email"}
    assert CdcReader(home, CdcConfig(dsn, "accounts", tokenize=())).tokenize == set()
    with pytest.raises(ValueError, match="tokenize: column 'mail' is not in 'accounts'"):
        CdcReader(home, CdcConfig(dsn, "accounts", tokenize=("mail",)))
    with pytest.raises(ValueError, match="table: 'Accounts; drop' must be name or schema.name"):
        CdcConfig(dsn, "Accounts; drop")
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    bad_dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=missing_db connect_timeout=5"
    out = subprocess.run([sys.executable, "-m", "headwater", "cdc", "run", "--dsn", bad_dsn, "--table", "accounts"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 75 and 'database "missing_db" does not exist' in out.stderr  # TransientError


def test_initial_snapshot_then_changes_and_a_crash_during_setup(home, dsn, token, monkeypatch):
    workload(dsn, 15, seed=6)  # history before capture: only its end state can be captured
    with psycopg.connect(dsn) as conn:
        since = conn.execute("SELECT max(n) FROM audit").fetchone()[0]
        before = conn.execute("SELECT id, email, plan, seats, country FROM accounts ORDER BY id").fetchall()
    assert before
    # Crash after the slot was made, before its snapshot reached bronze.
    monkeypatch.setattr(Lake, "append_once", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        CdcReader(home, config(dsn)).setup()
    monkeypatch.undo()

    reader = CdcReader(home, config(dsn))
    assert reader.setup() == len(before)  # slot made again, snapshot written
    assert reader.setup() == 0  # idempotent
    workload(dsn, 15, seed=7)
    reader.run(available_now=True)
    reader.close()
    snap = query(home, "SELECT DISTINCT commit_ts FROM bronze.cdc_accounts WHERE op = 'snapshot'").to_pylist()
    assert len(snap) == 1
    assert dim_rows(home) == expected_history(dsn, token, since, (before, snap[0]["commit_ts"]))


def test_toasted_values_types_and_truncate_in_bronze_records(home, postgres):
    dsn = postgres.create_database(f"cdc_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, plan text, notes text, price numeric(10, 2), ratio float8, "
            "active boolean, born date, seen timestamptz)"
        )
    reader = CdcReader(home, CdcConfig(dsn, "accounts", slot=slot_of(dsn)))
    reader.setup()
    big = "".join(uuid.uuid4().hex for _ in range(400))  # 12.8 KB, incompressible: stored out of line (TOAST)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts VALUES (1, 'free', %s, 9.99, 0.5, true, '2024-02-29', '2024-03-01 12:00:00+00')", (big,))
        conn.execute("UPDATE accounts SET plan = 'pro' WHERE id = 1")  # notes unchanged: pgoutput sends it as 'u'
        conn.execute("TRUNCATE accounts")
    assert reader.run(available_now=True) == 3
    reader.close()
    recs = query(home, "SELECT op, after FROM bronze.cdc_accounts WHERE op <> 'snapshot' ORDER BY commit_lsn, seq").to_pylist()
    assert [r["op"] for r in recs] == ["insert", "update", "truncate"]
    import json

    after = json.loads(recs[1]["after"])
    assert after == {"id": 1, "plan": "pro", "notes": big, "price": "9.99", "ratio": 0.5, "active": True, "born": "2024-02-29", "seen": "2024-03-01 12:00:00+00"}
    dim = query(home, "SELECT plan, born, seen, price, is_current, deleted FROM silver.dim_account ORDER BY valid_from").to_pylist()
    assert dim == [  # every column tracked (the default); the TRUNCATE closed the last version
        {"plan": "free", "born": dt.date(2024, 2, 29), "seen": dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc), "price": "9.99", "is_current": False, "deleted": False},
        {"plan": "pro", "born": dt.date(2024, 2, 29), "seen": dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc), "price": "9.99", "is_current": False, "deleted": True},
    ]


def test_reader_reconnects_after_its_connection_is_killed(home, dsn, token):
    import threading

    reader = CdcReader(home, config(dsn))
    reader.setup()
    stop = threading.Event()
    t = threading.Thread(target=reader.run, kwargs={"stop": stop, "interval_s": 0.05})
    t.start()
    try:
        workload(dsn, 5, seed=8)
        with psycopg.connect(dsn, autocommit=True) as conn:
            pid = reader.conn.info.backend_pid
            assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        workload(dsn, 10, seed=9)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if Lake.of(home).exists("silver.dim_account") and dim_rows(home) == expected_history(dsn, token):
                break
            time.sleep(0.2)
        assert reader.conn.info.backend_pid != pid  # it did reconnect
    finally:
        stop.set()
        t.join(60)
    reader.close()
    assert_bronze_exact(home, dsn)
    assert dim_rows(home) == expected_history(dsn, token)
