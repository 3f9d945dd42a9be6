"""``silver.dim_account`` (SCD type 2) from the change records of ``bronze.cdc_<table>``.

Grain: one row per version of a row of the source table — ``key`` columns, ``tracked``
columns, ``valid_from`` / ``valid_to`` (commit times, UTC; ``valid_to`` NULL while current),
``is_current``, ``deleted`` (the version was ended by a DELETE), ``lsn_from`` / ``lsn_to``
(end LSN of the transactions that started / ended it; ``(key, lsn_from)`` is unique).

Rules (Kimball SCD type 2, at commit granularity — what other transactions could see):

- changes of one key inside one transaction collapse to the last one;
- a row of the initial snapshot, or an INSERT, starts a version; an UPDATE starts one only when a tracked column changed
  (``IS DISTINCT FROM``: NULLs compare equal); the new version closes the previous one
  (``valid_to`` = the new ``valid_from``);
- a DELETE closes the current version (``deleted`` true) and starts none: a deleted key has
  no current row; a later INSERT of the same key starts a new version;
- a TRUNCATE closes every current version (``deleted`` true), as a DELETE of each row;
- a change of a key with no version yet (a row older than the capture) starts one; its
  DELETE closes nothing.

One query does it (:func:`scd2_sql`): the open versions of the keys a batch touches, then the
batch's changes in commit order, marked with window functions. :func:`apply` merges its rows
into the table (Delta MERGE on ``(key, lsn_from)``: open versions updated, new ones
inserted); :func:`rebuild` runs it over all of bronze with no open versions and overwrites
the table — the same definition, so a rebuild equals the incrementally maintained table.
Both commit with the Delta txn ``(app_id, version)``, ``version`` = the bronze batch's LSN.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from headwater.config import Home
from headwater.files import write_atomic
from headwater.events import TS
from headwater.lake import tables
from headwater.sources.mapping import ident, lit

# Postgres type OID → DuckDB type of the dimension column (pg_type.dat); others VARCHAR.
PG_TYPES = {16: "BOOLEAN", 20: "BIGINT", 21: "SMALLINT", 23: "INTEGER", 700: "FLOAT", 701: "DOUBLE",
            1082: "DATE", 1114: "TIMESTAMP", 1184: "TIMESTAMPTZ"}


@dataclass(frozen=True)
class DimSpec:
    """``key`` / ``tracked``: ``((column, DuckDB type), ...)``; ``path``: the dimension table;
    ``bronze``: its change records; ``app_id``: the Delta txn app id of both."""

    path: Path
    key: tuple[tuple[str, str], ...]
    tracked: tuple[tuple[str, str], ...]
    bronze: Path
    app_id: str

    def save(self, home: Home) -> None:
        """Record the spec under ``<home>/cdc/`` so :func:`build` can rebuild without Postgres."""
        path = home.root / "cdc" / f"{self.path.name}.json"
        rel = lambda p: str(Path(p).relative_to(home.root))  # noqa: E731 - the home may move
        doc = {"path": rel(self.path), "key": self.key, "tracked": self.tracked, "bronze": rel(self.bronze), "app_id": self.app_id}
        write_atomic(path, json.dumps(doc, indent=2).encode())


def specs(home: Home) -> list[DimSpec]:
    """The dimensions CDC readers of ``home`` maintain (saved by :meth:`DimSpec.save`)."""
    out = []
    for f in sorted((home.root / "cdc").glob("*.json")):
        d = json.loads(f.read_text())
        out.append(DimSpec(home.root / d["path"], tuple(map(tuple, d["key"])), tuple(map(tuple, d["tracked"])), home.root / d["bronze"], d["app_id"]))
    return out


def build(home: Home) -> dict[str, int]:
    """Rebuild every CDC dimension of ``home`` from its bronze change records (the batch
    layer's backfill: same result as the incremental merges). Returns ``{"silver.<dim>": rows}``."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    try:
        return {f"silver.{s.path.name}": rebuild(s, con) for s in specs(home)}
    finally:
        con.close()


def scd2_sql(spec: DimSpec, changes: str, open_rows: str | None) -> str:
    """Versions to write for the change records ``changes`` (a relation with bronze.cdc
    columns) given the table's open versions ``open_rows`` (None: none)."""
    keys = [ident(c) for c, _ in spec.key]
    tracked = [ident(c) for c, _ in spec.tracked]

    def extract(img: str, col: str, typ: str) -> str:
        return f"CAST(json_extract_string({img}, {lit('$.' + _json_str(col))}) AS {typ}) AS {ident(col)}"

    key_list = ", ".join(keys)
    ch_cols = [extract("coalesce(after, before)", c, t) for c, t in spec.key] + [extract("after", c, t) for c, t in spec.tracked]
    vals = f"struct_pack({', '.join(f'{c} := {c}' for c in tracked)})" if tracked else "NULL"
    if open_rows is None:
        nulls = [f"CAST(NULL AS {t}) AS {ident(c)}" for c, t in spec.key + spec.tracked]
        open_rows = f"SELECT {', '.join(nulls)}, CAST(NULL AS TIMESTAMPTZ) AS valid_from, CAST(NULL AS BIGINT) AS lsn_from WHERE false"
    cols = ", ".join(keys + tracked)
    return f"""
        WITH open_rows AS ({open_rows}),
        rows_ch AS (
            SELECT {', '.join(ch_cols)}, op, commit_lsn, seq, commit_ts
            FROM {changes}
            WHERE op IN ('snapshot', 'insert', 'update', 'delete')
        ),
        truncated AS (  -- a TRUNCATE deletes every key known at that point
            SELECT k.*, 'delete' AS op, t.commit_lsn, t.seq, t.commit_ts
            FROM (SELECT DISTINCT {key_list} FROM (SELECT {key_list} FROM open_rows UNION ALL SELECT {key_list} FROM rows_ch)) k
            CROSS JOIN (SELECT commit_lsn, seq, commit_ts FROM {changes} WHERE op = 'truncate') t
        ),
        ch AS (  -- the last change of each key in each transaction
            SELECT * FROM (SELECT * FROM rows_ch UNION ALL BY NAME SELECT * FROM truncated)
            QUALIFY row_number() OVER (PARTITION BY {key_list}, commit_lsn ORDER BY seq DESC) = 1
        ),
        timeline AS (
            SELECT {cols}, 'open' AS op, lsn_from AS commit_lsn, valid_from AS commit_ts FROM open_rows
            UNION ALL
            SELECT {cols}, op, commit_lsn, commit_ts FROM ch
        ),
        marked AS (
            SELECT *, {vals} AS _vals,
                   lag(op) OVER w AS _prev_op,
                   lag({vals}) OVER w AS _prev_vals
            FROM timeline
            WINDOW w AS (PARTITION BY {key_list} ORDER BY commit_lsn)
        ),
        edges AS (  -- rows that start a version, or end one (a delete of an open version)
            SELECT * FROM marked
            WHERE op = 'open'
               OR (op = 'delete' AND _prev_op IS NOT NULL AND _prev_op <> 'delete')
               OR (op IN ('snapshot', 'insert', 'update') AND (_prev_op IS NULL OR _prev_op = 'delete' OR _vals IS DISTINCT FROM _prev_vals))
        ),
        versions AS (
            SELECT *,
                   lead(commit_ts) OVER w AS _next_ts,
                   lead(commit_lsn) OVER w AS _next_lsn,
                   lead(op) OVER w AS _next_op
            FROM edges
            WINDOW w AS (PARTITION BY {key_list} ORDER BY commit_lsn)
        )
        SELECT {cols},
               commit_ts AS valid_from,
               _next_ts AS valid_to,
               _next_ts IS NULL AS is_current,
               coalesce(_next_op = 'delete', false) AS deleted,
               commit_lsn AS lsn_from,
               _next_lsn AS lsn_to
        FROM versions
        WHERE op <> 'delete'
        ORDER BY {key_list}, lsn_from"""


def _json_str(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _conform(result: pa.Table) -> pa.Table:
    """Timestamps as ``timestamp[us, UTC]``; ``is_current`` / ``deleted`` not null."""
    fields = []
    for f in result.schema:
        if pa.types.is_timestamp(f.type) and f.type.tz is not None:
            f = pa.field(f.name, TS)
        if f.name in ("is_current", "deleted", "lsn_from"):
            f = f.with_nullable(False)
        fields.append(f)
    return result.cast(pa.schema(fields))


def apply(spec: DimSpec, con: duckdb.DuckDBPyConnection, changes: pa.Table, *, version: int) -> int:
    """Merge the versions implied by ``changes`` (bronze.cdc rows) into the dimension, in one
    commit with txn ``(spec.app_id, version)``. Skipped (returns 0) if that txn is already
    there. Returns the number of version rows written (new or updated)."""
    app_id = spec.app_id
    committed = tables.committed_batch(spec.path, app_id)
    if committed is not None and committed >= version:
        return 0
    con.register("hw_changes", changes)
    open_rows = None
    if tables.exists(spec.path):
        con.register("hw_dim", tables.dataset(spec.path))
        touched = ", ".join(
            f"CAST(json_extract_string(coalesce(after, before), {lit('$.' + _json_str(c))}) AS {t}) AS {ident(c)}" for c, t in spec.key
        )
        match = " AND ".join(f"d.{ident(c)} = k.{ident(c)}" for c, _ in spec.key)
        open_rows = f"SELECT d.* FROM hw_dim d SEMI JOIN (SELECT DISTINCT {touched} FROM hw_changes) k ON {match} WHERE d.is_current"
        if "truncate" in changes.column("op").to_pylist():  # rare: every open version is touched
            open_rows = "SELECT * FROM hw_dim WHERE is_current"
    rows = _conform(con.sql(scd2_sql(spec, "hw_changes", open_rows)).to_arrow_table())
    props = CommitProperties(app_transactions=[Transaction(app_id, version)])
    if not tables.exists(spec.path):
        write_deltalake(str(spec.path), rows, mode="append", commit_properties=props)
        return rows.num_rows
    on = " AND ".join(f"t.{ident(c)} = s.{ident(c)}" for c, _ in spec.key) + " AND t.lsn_from = s.lsn_from"
    values = {ident(c): f"s.{ident(c)}" for c in rows.column_names}
    (
        DeltaTable(str(spec.path))
        .merge(rows, on, source_alias="s", target_alias="t", commit_properties=props)
        .when_matched_update(values)
        .when_not_matched_insert(values)
        .execute()
    )
    return rows.num_rows


def rebuild(spec: DimSpec, con: duckdb.DuckDBPyConnection) -> int:
    """Recompute the whole dimension from every change in ``spec.bronze`` and overwrite it (a
    backfill); committed with txn ``(app_id, <bronze's version>)``. Returns its row count
    (0, nothing written, when bronze has no change records yet)."""
    version = tables.committed_batch(spec.bronze, spec.app_id)
    if version is None:
        return 0
    con.register("hw_bronze", tables.dataset(spec.bronze))
    rows = _conform(con.sql(scd2_sql(spec, "hw_bronze", None)).to_arrow_table())
    write_deltalake(str(spec.path), rows, mode="overwrite", schema_mode="overwrite",
                    commit_properties=CommitProperties(app_transactions=[Transaction(spec.app_id, version)]))
    return rows.num_rows
