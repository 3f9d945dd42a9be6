"""Postgres CDC reader: a logical replication slot → ``bronze.cdc_<table>`` → ``silver.dim_account``.

How changes are read. A publication on the table and a logical replication slot with the
built-in ``pgoutput`` plugin; each poll runs ``pg_logical_slot_peek_binary_changes`` (plain
SQL, no replication connection) and decodes the messages (:mod:`.pgoutput`). Why this way:
psycopg 3 has no client for the streaming replication protocol (``START_REPLICATION``
/ CopyBoth), ``wal2json`` is not installed with Postgres here while ``pgoutput`` always is,
and a peek leaves the slot where it is until we confirm, which is what exactly-once needs.
Decoding returns only committed transactions, whole, in commit order.

Exactly once (the offset is the slot's confirmed LSN, the sink is idempotent):

1. peek up to ``max_changes`` changes (whole transactions) from the slot's confirmed LSN;
2. drop the transactions whose end LSN is ≤ the version bronze already holds (written
   before a crash that came ahead of step 5);
3. append the rest to ``bronze.cdc_<table>`` in one Delta commit with the txn action
   ``(app_id, version)``, ``version`` = end LSN of the last transaction;
4. merge them into the SCD2 dimension with the same txn (:mod:`.scd2`); skipped if it is
   already there;
5. confirm: ``pg_replication_slot_advance(slot, end LSN)``; Postgres may now recycle the WAL.

A SIGKILL anywhere leaves: before 3 — nothing written, the same transactions are peeked
again; between 3 and 4 — :meth:`CdcReader.recover` applies bronze's rows past the
dimension's version; between 4 and 5 — step 2 skips what is peeked again. Nothing lost
(the slot keeps WAL until confirmed), nothing doubled (versions are LSNs).

Bronze columns (``CDC_SCHEMA``): ``op`` (snapshot / insert / update / delete / truncate), ``lsn`` (the
change's WAL position), ``commit_lsn`` (end LSN of its transaction), ``seq`` (position in the
transaction), ``xid``, ``commit_ts`` (UTC), ``relation`` (``schema.table``), ``before`` /
``after`` (JSON objects of the row images; ``before`` needs ``REPLICA IDENTITY FULL``, which
:meth:`CdcReader.setup` sets), ``ds`` (UTC date of ``commit_ts``). Columns listed in
``tokenize`` hold HMAC tokens (:mod:`headwater.ingest.tokens`), never the raw values.

Initial snapshot: :meth:`CdcReader.setup` creates the slot and reads the table in the
slot's exported snapshot, so bronze starts with the table as of the slot's consistent point
(``op = 'snapshot'``) and continues with exactly the changes after it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from dataclasses import dataclass

import msgspec
import psycopg
import pyarrow as pa

from headwater.lake.schemas import CDC_SCHEMA
from headwater.ingest.pii import normalize_key
from headwater.ingest.tokens import Tokenizer
from headwater.config import DEFAULT_TOKENIZE_KEYS, Home
from headwater.errors import InvalidInputError, NotFoundError, TransientError
from headwater.lake.store import Lake
from headwater.sources.cdc import pgoutput, scd2
from headwater.sources.files import connect

log = logging.getLogger("headwater.cdc")

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class CdcConfig:
    """What to capture. ``table``: ``name`` or ``schema.name`` (lowercase identifiers);
    ``key``: key columns (default: the primary key); ``tracked``: columns whose change starts
    a new version (default: every non-key column); ``tokenize``: columns stored as HMAC tokens
    (default None: the columns whose names the default PII policy tokenises — email, phone, …);
    ``dim``: the dimension's name in ``silver``; ``slot`` / ``publication``: default
    ``headwater_<table>``; ``max_changes``: bound of one poll (whole transactions)."""

    dsn: str
    table: str
    key: tuple[str, ...] = ()
    tracked: tuple[str, ...] = ()
    tokenize: tuple[str, ...] | None = None
    dim: str = "dim_account"
    slot: str | None = None
    publication: str | None = None
    max_changes: int = 10_000

    def __post_init__(self):
        for part in self.table.split("."):
            if not _NAME.match(part):
                raise InvalidInputError(f"table: {self.table!r} must be name or schema.name in lowercase letters, digits and _")
        for what, v in (("slot", self.slot), ("publication", self.publication), ("dim", self.dim)):
            if v is not None and not _NAME.match(v):
                raise InvalidInputError(f"{what}: {v!r} must be lowercase letters, digits and _")

    @property
    def schema_name(self) -> str:
        return self.table.split(".")[0] if "." in self.table else "public"

    @property
    def name(self) -> str:
        return self.table.split(".")[-1]

    @property
    def slot_name(self) -> str:
        return self.slot or f"headwater_{self.name}"

    @property
    def publication_name(self) -> str:
        return self.publication or f"headwater_{self.name}"


class CdcReader:
    """Reads one table's changes into ``bronze.cdc_<table>`` and ``silver.<dim>``.

    Construction connects and reads the table's columns; raises
    :class:`~headwater.errors.TransientError` if Postgres is unreachable,
    :class:`~headwater.errors.NotFoundError` if the table does not exist and
    :class:`~headwater.errors.InvalidInputError` naming the option for a bad name or column."""

    def __init__(self, home: Home, config: CdcConfig):
        self.home, self.config = home, config
        self.app_id = f"cdc:{config.slot_name}"
        self.lake = Lake.of(home)
        self.bronze = f"bronze.cdc_{config.name}"
        try:
            self.conn = psycopg.connect(config.dsn, autocommit=True)
        except psycopg.OperationalError as e:
            # libpq gives no SQLSTATE for a failed connection: refused, timed out, no such
            # database and a bad password look alike, so all count as worth a retry.
            raise TransientError(f"cdc.dsn: cannot connect to the source database: {str(e).strip()}", field="cdc.dsn") from e
        except psycopg.ProgrammingError as e:  # a malformed connection string
            raise InvalidInputError(f"cdc.dsn: {str(e).strip()}", field="cdc.dsn") from e
        self.tokenizer = Tokenizer(home.hmac_key())
        self.tokenize: set[str] = set(config.tokenize or ())
        self.dim = self._dim_spec()
        self.dim.save(home)
        self.con = connect()
        self.idle = False

    def _dim_spec(self) -> scd2.DimSpec:
        c = self.config
        rows = self.conn.execute(
            """
            SELECT a.attname, a.atttypid::int, coalesce(i.indisprimary, false)
            FROM pg_attribute a
            LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY(i.indkey)
            WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """,
            (c.table,),
        ).fetchall()
        if not rows:
            raise NotFoundError(f"table: {c.table!r} does not exist in the database", field="table")
        self.columns = [(name, oid) for name, oid, _ in rows]
        if c.tokenize is None:  # the default PII policy's identifier keys (headwater.ingest.pii)
            self.tokenize = {name for name, _, _ in rows if normalize_key(name) in DEFAULT_TOKENIZE_KEYS}
        types = {name: ("VARCHAR" if name in self.tokenize else scd2.PG_TYPES.get(oid, "VARCHAR")) for name, oid, _ in rows}
        key = c.key or tuple(name for name, _, pk in rows if pk)
        if not key:
            raise InvalidInputError(f"key: {c.table!r} has no primary key: name the key columns")
        tracked = c.tracked or tuple(n for n in types if n not in key)
        for what, cols in (("key", key), ("tracked", tracked), ("tokenize", c.tokenize or ())):
            missing = [col for col in cols if col not in types]
            if missing:
                raise InvalidInputError(f"{what}: column {missing[0]!r} is not in {c.table!r}; its columns are {', '.join(types)}")
        return scd2.DimSpec(
            f"silver.{c.dim}",
            tuple((k, types[k]) for k in key),
            tuple((t, types[t]) for t in tracked),
            self.bronze,
            self.app_id,
        )

    # -- setup ------------------------------------------------------------------------
    def setup(self, snapshot: bool = True) -> int:
        """Idempotently: ``REPLICA IDENTITY FULL`` on the table (UPDATE/DELETE then carry the
        whole old row), the publication, and the slot. With ``snapshot`` a new slot comes with
        the table's rows as of the slot's consistent point (:meth:`_snapshot`); a slot whose
        snapshot never reached bronze (a crash during setup) is dropped and made again.
        Returns the number of snapshot rows written (0 when the slot existed)."""
        c = self.config
        table = f'"{c.schema_name}"."{c.name}"'
        identity = self.conn.execute("SELECT relreplident FROM pg_class WHERE oid = to_regclass(%s)", (c.table,)).fetchone()[0]
        if identity != "f":  # the ALTER takes an ACCESS EXCLUSIVE lock: only when needed
            self.conn.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
        if not self.conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (c.publication_name,)).fetchone():
            self.conn.execute(f'CREATE PUBLICATION "{c.publication_name}" FOR TABLE {table}')
        exists = self.conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (c.slot_name,)).fetchone()
        if exists and snapshot and self.lake.committed_batch(self.bronze, self.app_id) is None:
            self.conn.execute("SELECT pg_drop_replication_slot(%s)", (c.slot_name,))
            exists = None
        if exists:
            return 0
        if not snapshot:
            self.conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (c.slot_name,))
            return 0
        return self._snapshot()

    def _snapshot(self) -> int:
        """Create the slot and read the table in the slot's own snapshot: on a replication
        connection, ``CREATE_REPLICATION_SLOT … (SNAPSHOT 'use')`` as the first statement of a
        REPEATABLE READ transaction makes the transaction see the database exactly as of the
        slot's consistent point (PostgreSQL docs, "Streaming Replication Protocol"). Every
        change after it is decoded from the slot; none before it is. The rows are written
        as ``op = 'snapshot'`` records at that LSN (``commit_ts`` = the snapshot's time), in one
        bronze commit whose txn version is that LSN — also when the table is empty, so that
        commit marks the snapshot as done."""
        c = self.config
        repl = psycopg.connect(c.dsn, autocommit=True, replication="database")
        try:
            pg = repl.pgconn

            def run(sql: str):
                res = pg.exec_(sql.encode())
                if res.status not in (1, 2):  # COMMAND_OK, TUPLES_OK
                    raise psycopg.OperationalError(f"{sql.split()[0]}: {res.error_message.decode(errors='replace').strip()}")
                return res

            run("BEGIN ISOLATION LEVEL REPEATABLE READ")
            lsn = pgoutput.parse_lsn(run(f'CREATE_REPLICATION_SLOT "{c.slot_name}" LOGICAL pgoutput (SNAPSHOT \'use\')').get_value(0, 1).decode())
            names = ", ".join(f'"{n}"::text' for n, _ in self.columns)
            res = run(f'SELECT {names} FROM "{c.schema_name}"."{c.name}"')
            rows = [[res.get_value(i, j) for j in range(res.nfields)] for i in range(res.ntuples)]
            snapshot_time = run("SELECT now()::text").get_value(0, 0).decode()  # the transaction's start
            run("COMMIT")
        finally:
            repl.close()
        at = dt.datetime.fromisoformat(snapshot_time)
        commit_us = int(at.timestamp() * 1_000_000)
        txn = pgoutput.Transaction(xid=0, commit_lsn=lsn, end_lsn=lsn, commit_us=commit_us)
        rel = pgoutput.Relation(0, c.schema_name, c.name, ())
        for i, row in enumerate(rows):
            after = {n: None if v is None else pgoutput.text_value(v.decode(), oid) for (n, oid), v in zip(self.columns, row)}
            txn.changes.append(pgoutput.Change("snapshot", rel, lsn, i, after=after))
        data = self._records([txn])
        self.lake.append_once(self.bronze, data, app_id=self.app_id, batch_id=lsn)
        if data.num_rows:
            scd2.apply(self.dim, self.lake, self.con, data, version=lsn)
        log.info("snapshot of %s at LSN %s: %d rows", c.table, pgoutput.format_lsn(lsn), data.num_rows)
        return data.num_rows

    def confirmed_lsn(self) -> int | None:
        """The slot's confirmed flush LSN (where the next peek starts); None without a slot."""
        row = self.conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (self.config.slot_name,)).fetchone()
        return pgoutput.parse_lsn(row[0]) if row and row[0] else None

    # -- the loop ---------------------------------------------------------------------
    def recover(self) -> None:
        """Bring the dimension up to bronze's version (a crash between steps 3 and 4)."""
        version = self.lake.committed_batch(self.bronze, self.app_id)
        if version is None:
            return
        done = self.lake.committed_batch(self.dim.table, self.app_id)
        if done is not None and done >= version:
            return
        self.con.register("hw_bronze_all", self.lake.dataset(self.bronze))
        pending = self.con.sql(f"SELECT * FROM hw_bronze_all WHERE commit_lsn > {done or 0} ORDER BY commit_lsn, seq").to_arrow_table()
        log.info("recovering %s: %d changes past LSN %s", self.dim.table, pending.num_rows, pgoutput.format_lsn(done or 0))
        scd2.apply(self.dim, self.lake, self.con, pending.cast(CDC_SCHEMA), version=version)

    def poll(self) -> int:
        """One batch (steps 1–5); returns the number of changes written (0: nothing new).
        Sets :attr:`idle` when the slot had nothing committed to decode."""
        c = self.config
        # The peek is bounded by the flush LSN read first. When nothing of the publication
        # committed before it, the slot is confirmed up to it anyway: PG 15's pgoutput sends
        # no empty transactions, so an idle table on a busy database would otherwise pin WAL
        # forever. Transactions still open at that LSN are kept by the slot (the advance
        # decodes up to it and keeps restart_lsn behind them).
        flush = self.conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        rows = self.conn.execute(
            "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(%s, %s::pg_lsn, %s, 'proto_version', '1', 'publication_names', %s)",
            (c.slot_name, flush, c.max_changes, c.publication_name),
        ).fetchall()
        decoder = pgoutput.Decoder()
        txns = [t for lsn, data in rows if (t := decoder.feed(pgoutput.parse_lsn(lsn), bytes(data))) is not None]
        self.idle = not txns
        if not txns:
            if pgoutput.parse_lsn(flush) > (self.confirmed_lsn() or 0):
                self.confirm(pgoutput.parse_lsn(flush))
            return 0
        written = self.lake.committed_batch(self.bronze, self.app_id) or 0
        new = [t for t in txns if t.end_lsn > written]
        changes = 0
        if new:
            data = self._records(new)
            changes = data.num_rows
            version = new[-1].end_lsn
            if changes:
                self.lake.append_once(self.bronze, data, app_id=self.app_id, batch_id=version)
                scd2.apply(self.dim, self.lake, self.con, data, version=version)
        self.confirm(txns[-1].end_lsn)  # only now: everything up to it is committed in both tables
        return changes

    def confirm(self, lsn: int) -> None:
        """Advance the slot's confirmed LSN to ``lsn`` (step 5)."""
        self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (self.config.slot_name, pgoutput.format_lsn(lsn)))

    def run(self, stop: threading.Event | None = None, interval_s: float = 1.0, available_now: bool = False,
            compact_every: int = 100) -> int:
        """Recover, then poll until ``stop`` is set, waiting ``interval_s`` after a poll that
        found nothing (and reconnecting, with exponential backoff up to 30 s, when the
        connection to Postgres is lost); with ``available_now``, return at the first such poll (Spark's
        ``Trigger.AvailableNow``). Every ``compact_every`` batches that wrote changes, both
        tables' small files are compacted (delta-rs OPTIMIZE; 0: never). Returns changes written."""
        stop = stop or threading.Event()
        self.recover()
        total = batches = failures = 0
        while not stop.is_set():
            try:
                n = self.poll()
                failures = 0
            except psycopg.OperationalError as e:
                # Connection lost (server restart, terminated backend): reconnect with backoff.
                # Safe at any point of a batch: the next poll peeks from the slot's confirmed
                # LSN and skips what bronze already holds.
                failures += 1
                log.warning("CDC connection lost (%s); reconnecting, attempt %d", str(e).strip(), failures)
                if stop.wait(min(interval_s * 2 ** failures, 30.0)):
                    break
                self._reconnect()
                continue
            total += n
            batches += n > 0
            if n and compact_every and batches % compact_every == 0:
                self.compact()
            if self.idle:
                if available_now:
                    break
                stop.wait(interval_s)
        return total

    def _reconnect(self) -> None:
        try:
            self.conn.close()
            self.conn = psycopg.connect(self.config.dsn, autocommit=True)
        except psycopg.OperationalError as e:
            log.warning("CDC reconnect failed: %s", str(e).strip())

    def compact(self) -> None:
        """Rewrite the small files of ``bronze.cdc_<table>`` and the dimension into larger ones.
        Only this reader writes them, so OPTIMIZE never conflicts with a writer."""
        for table in (self.bronze, self.dim.table):
            self.lake.compact(table)

    def _records(self, txns: list[pgoutput.Transaction]) -> pa.Table:
        cols: dict[str, list] = {f.name: [] for f in CDC_SCHEMA}
        schema, name = self.config.schema_name, self.config.name
        for t in txns:
            ts = dt.datetime.fromtimestamp(t.commit_us / 1e6, dt.timezone.utc)
            for ch in t.changes:
                if ch.relation.schema != schema or ch.relation.name != name:
                    continue
                cols["op"].append(ch.op)
                cols["lsn"].append(ch.lsn)
                cols["commit_lsn"].append(t.end_lsn)
                cols["seq"].append(ch.seq)
                cols["xid"].append(t.xid)
                cols["commit_ts"].append(t.commit_us)
                cols["relation"].append(f"{schema}.{name}")
                cols["before"].append(self._image(ch.before))
                cols["after"].append(self._image(ch.after))
                cols["ds"].append(ts.date())
        return pa.table(cols, schema=CDC_SCHEMA)

    def _image(self, row: dict | None) -> str | None:
        if row is None:
            return None
        for col in self.tokenize.intersection(row):
            if row[col] is not None:
                row[col] = self.tokenizer(str(row[col]))
        return _encode(row).decode()

    def rebuild_dim(self) -> int:
        """Recompute ``silver.<dim>`` from all of bronze (backfill); returns its rows."""
        return scd2.rebuild(self.dim, self.lake, self.con)

    def close(self) -> None:
        self.conn.close()
        self.con.close()
