"""SCD type 2 dimensions (``silver.dim_<name>``) from the change records of ``bronze.cdc_<table>``.

Grain: one row per version of a row of the source table — ``key`` columns, ``tracked``
columns, ``valid_from`` / ``valid_to`` (commit times, UTC; ``valid_to`` NULL while current),
``is_current``, ``deleted`` (the version was ended by a DELETE), ``lsn_from`` / ``lsn_to``
(end LSN of the transactions that started / ended it; ``(key, lsn_from)`` is unique). The
schema is derived from the captured table's columns (:func:`table_spec`).

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
batch's changes in commit order, marked with window functions. :func:`apply` (the CDC
reader, incrementally) merges its rows into the table (Delta MERGE on ``(key, lsn_from)``:
open versions updated, new ones inserted); :func:`rebuilt` runs it over all of bronze with
no open versions — the batch layer's model of the dimension
(:func:`headwater.models.dag.dim_models`), which replaces the table whole, and
:func:`rebuild`. The same definition, so a rebuild equals the incrementally maintained
table. Both commit with the Delta txn ``(app_id, version)``, ``version`` = the bronze
batch's LSN.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from headwater.config import Home
from headwater.errors import ConflictError, InvalidInputError
from headwater.events import TS
from headwater.files import write_atomic
from headwater.lake import catalog
from headwater.lake.catalog import TableSpec
from headwater.lake.store import Lake
from headwater.sources.mapping import ident, lit

# Postgres type OID → DuckDB type of the dimension column (pg_type.dat); others VARCHAR.
PG_TYPES = {16: "BOOLEAN", 20: "BIGINT", 21: "SMALLINT", 23: "INTEGER", 700: "FLOAT", 701: "DOUBLE",
            1082: "DATE", 1114: "TIMESTAMP", 1184: "TIMESTAMPTZ"}
# DuckDB type of a dimension column (the values of PG_TYPES, or VARCHAR) -> Arrow type written.
ARROW_TYPES = {"BOOLEAN": pa.bool_(), "BIGINT": pa.int64(), "SMALLINT": pa.int16(), "INTEGER": pa.int32(),
               "FLOAT": pa.float32(), "DOUBLE": pa.float64(), "DATE": pa.date32(), "TIMESTAMP": pa.timestamp("us"),
               "TIMESTAMPTZ": TS, "VARCHAR": pa.string()}


@dataclass(frozen=True)
class DimSpec:
    """``table``: the dimension (``silver.dim_<name>``); ``key`` / ``tracked``: ``((column,
    DuckDB type), ...)``; ``bronze``: its change records (``bronze.cdc_<table>``); ``app_id``:
    the Delta txn app id of both."""

    table: str
    key: tuple[tuple[str, str], ...]
    tracked: tuple[tuple[str, str], ...]
    bronze: str
    app_id: str

    def save(self, home: Home) -> None:
        """Record the spec under ``<home>/cdc/`` so the batch layer can rebuild without Postgres."""
        doc = {"table": self.table, "key": self.key, "tracked": self.tracked, "bronze": self.bronze, "app_id": self.app_id}
        write_atomic(home.root / "cdc" / f"{self.table.partition('.')[2]}.json", json.dumps(doc, indent=2).encode())


def specs(home: Home) -> list[DimSpec]:
    """The dimensions CDC readers of ``home`` maintain (saved by :meth:`DimSpec.save`).

    A spec saved before tables were named (``"path": "lake/silver/dim_x"``) is read as the
    table its last two path parts name. :class:`InvalidInputError` naming the file if one
    is not a spec."""
    out = []
    for f in sorted((home.root / "cdc").glob("*.json")):
        try:
            d = json.loads(f.read_text())
            table, bronze = _name(d.get("table") or d["path"]), _name(d["bronze"])
            out.append(DimSpec(table, tuple(map(tuple, d["key"])), tuple(map(tuple, d["tracked"])), bronze, d["app_id"]))
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidInputError(f"{f}: not a CDC dimension spec ({e})", field=str(f)) from e
    return out


def _name(saved: str) -> str:
    return ".".join(Path(saved).parts[-2:]) if "/" in saved else saved  # "lake/silver/dim_x" -> "silver.dim_x"


def table_spec(spec: DimSpec) -> TableSpec:
    """The declaration of ``spec``'s dimension: the ``silver.dim_*`` family's (unpartitioned,
    one row per key and version) with the schema derived from the key and tracked columns."""
    family = catalog.spec(spec.table)
    if not family.is_family:
        raise ConflictError(f"dim: {spec.table} is a table of its own; name the CDC dimension otherwise", field="dim")
    columns = [pa.field(c, ARROW_TYPES[t]) for c, t in spec.key + spec.tracked]
    schema = pa.schema(columns + [
        pa.field("valid_from", TS), pa.field("valid_to", TS),
        pa.field("is_current", pa.bool_(), nullable=False), pa.field("deleted", pa.bool_(), nullable=False),
        pa.field("lsn_from", pa.int64(), nullable=False), pa.field("lsn_to", pa.int64()),
    ])
    return dataclasses.replace(family, name=spec.table, schema=schema,
                               description=f"SCD type 2 dimension of the CDC source {spec.bronze}.")


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


def apply(spec: DimSpec, lake: Lake, con: duckdb.DuckDBPyConnection, changes: pa.Table, *, version: int) -> int:
    """Merge the versions implied by ``changes`` (bronze.cdc rows) into the dimension, in one
    commit with txn ``(spec.app_id, version)``. Skipped (returns 0) if that txn is already
    there. Returns the number of version rows written (new or updated)."""
    app_id = spec.app_id
    committed = lake.committed_batch(spec.table, app_id)
    if committed is not None and committed >= version:
        return 0
    con.register("hw_changes", changes)
    open_rows = None
    if lake.exists(spec.table):
        con.register("hw_dim", lake.dataset(spec.table))
        touched = ", ".join(
            f"CAST(json_extract_string(coalesce(after, before), {lit('$.' + _json_str(c))}) AS {t}) AS {ident(c)}" for c, t in spec.key
        )
        match = " AND ".join(f"d.{ident(c)} = k.{ident(c)}" for c, _ in spec.key)
        open_rows = f"SELECT d.* FROM hw_dim d SEMI JOIN (SELECT DISTINCT {touched} FROM hw_changes) k ON {match} WHERE d.is_current"
        if "truncate" in changes.column("op").to_pylist():  # rare: every open version is touched
            open_rows = "SELECT * FROM hw_dim WHERE is_current"
    rows = con.sql(scd2_sql(spec, "hw_changes", open_rows)).to_arrow_table().cast(table_spec(spec).schema)
    if not lake.exists(spec.table):
        lake.append_once(spec.table, rows, app_id=app_id, batch_id=version)
        return rows.num_rows
    on = " AND ".join(f"t.{ident(c)} = s.{ident(c)}" for c, _ in spec.key) + " AND t.lsn_from = s.lsn_from"
    values = {ident(c): f"s.{ident(c)}" for c in rows.column_names}
    lake.merge(spec.table, rows, on, app_id=app_id, batch_id=version, update=values, insert=values)
    return rows.num_rows


def rebuilt(spec: DimSpec, lake: Lake, con: duckdb.DuckDBPyConnection) -> tuple[pa.Table, int] | None:
    """The whole dimension recomputed from bronze's change records, and the bronze version
    (the LSN of its last batch, its txn) it covers; ``None`` when bronze has no change
    records yet. Changes committed to bronze after that version was read are left out (they
    carry larger LSNs), so the version is exactly what the rows hold: the reader's recovery
    resumes after it."""
    version = lake.committed_batch(spec.bronze, spec.app_id)
    if version is None:
        return None
    con.register("hw_bronze", lake.dataset(spec.bronze))  # a snapshot at least as new as version
    changes = f"(SELECT * FROM hw_bronze WHERE commit_lsn <= {int(version)})"
    return con.sql(scd2_sql(spec, changes, None)).to_arrow_table().cast(table_spec(spec).schema), version


def rebuild(spec: DimSpec, lake: Lake, con: duckdb.DuckDBPyConnection) -> int:
    """Replace the dimension with :func:`rebuilt` (a backfill outside the batch DAG, e.g.
    ``headwater sources cdc rebuild``), committed with its txn; returns its row count (0,
    nothing written, when bronze has no change records yet)."""
    result = rebuilt(spec, lake, con)
    if result is None:
        return 0
    rows, version = result
    lake.replace_table(spec.table, rows, app_id=spec.app_id, batch_id=version)
    return rows.num_rows
