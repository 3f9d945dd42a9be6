"""``headwater import PATH``: CSV, JSON lines and Parquet exports → the event log or bronze.

:func:`load` reads, maps and validates the whole file in DuckDB into one table
(:func:`headwater.sources.mapping.mapped_query`): DuckDB reads the file (``read_csv`` /
``read_parquet``; JSON lines through :func:`headwater.sources.lines.read_lines`, so a
malformed line has an exact line number), maps and validates every row and derives event
ids. The distinct identifiers of the file are then tokenised once (:func:`indexed`) and
the rows go one of two ways (:func:`choose`, ``--bulk`` / ``--live``):

- **live**: Arrow batches of ``batch_rows`` rows, each written by
  :class:`~headwater.sources.canonical.LogSink` (canonical events, contracts, PII policy,
  partition, one log transaction per batch, the append of one batch overlapping the
  preparation of the next); the stream processor takes them to bronze and the real-time
  tables like any collected event;
- **bulk** (history, large files): straight into ``bronze.events`` / ``bronze.bad_rows``,
  chunk by chunk, each chunk one Delta commit with the import's txn, deduplicated against
  bronze (:mod:`.bulk`).

Both paths canonicalise with the same :class:`~headwater.sources.canonical.Canonicalizer`.

Bad input: a CSV line DuckDB cannot parse (wrong number of fields, unterminated quote) is
kept aside by DuckDB's ``store_rejects`` and becomes a ``decode_failure`` bad row naming the
line (payload left empty: a line that does not split into fields cannot have its identifier
field tokenised); a JSON line that is not a JSON object is a ``decode_failure`` with the line
as payload; a row that breaks a mapping rule is an ``envelope_violation`` naming the row,
the column and the rule (CSV / Parquet: ``row N`` = the N-th data row read, header and
rejected lines not counted; JSON lines: ``line N``). Good rows of the file are imported either way.

Re-importing a file (after a crash mid-import, or by mistake) gives the same event ids: on
the live path the stream's dedup drops them within its TTL, ``silver.events`` within
``models.config.DEDUP_DAYS`` days of event time (a re-import keeps event times); the
bulk path resumes after its last committed chunk and drops ids bronze already holds.
Memory: DuckDB holds the mapped rows of the whole file (it spills to disk when they exceed
its memory limit).
"""

from __future__ import annotations

import gzip
import json
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.log.base import EventLog
from headwater.sources import bulk
from headwater.sources.bulk import Imported
from headwater.sources.canonical import Canonicalizer, LogSink, with_tokens
from headwater.sources.lines import LINES_SCHEMA, object_sql, read_lines
from headwater.sources.mapping import MAPPED_COLUMNS, Mapping, check_columns, ident, lit, mapped_query, renumber_repeats

FILE_FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def detect_format(path: Path) -> str:
    """``csv`` / ``jsonl`` / ``parquet`` from the file name (a ``.gz`` suffix is looked
    through); :class:`InvalidInputError` naming the option to use when the name does not tell."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise InvalidInputError(f"format: cannot tell the format of {Path(path).name!r} from its name: give one of {', '.join(FILE_FORMATS)}", field="format")
    return fmt


def connect() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection for source queries: session time zone UTC, so naive timestamps
    read as UTC and ``TIMESTAMPTZ`` results come back in UTC."""
    con = duckdb.connect(":memory:", config={"temp_directory": tempfile.gettempdir()})
    con.execute("SET TimeZone = 'UTC'")
    return con


def import_file(
    home: Home,
    path: Path,
    mapping: Mapping,
    *,
    fmt: str | None = None,
    source: str = "import",
    mode: str = "live",
    watermark_us: int | None = None,
    batch_rows: int = 200_000,
    chunk_rows: int | None = None,
    log: EventLog | None = None,
) -> Imported:
    """Import ``path`` as events of ``source``; returns what was done.

    ``mode``: ``live`` (into the event log, batches of ``batch_rows``: the stream processor
    takes them to bronze and the real-time tables), ``bulk`` (straight into bronze, chunks of
    ``chunk_rows`` rows, each one Delta commit; default :func:`.bulk.chunk_size` of the file's
    rows: :mod:`.bulk`) or ``auto`` (:func:`choose`:
    bulk for a large file or history, events older than ``watermark_us``, µs since the epoch;
    default: now minus 10 minutes, the default pipeline's watermark delay). ``fmt``: ``csv``,
    ``jsonl`` or ``parquet`` (default: from the file name). ``log``: the event log of the live path.

    Raises :class:`NotFoundError` for a missing file, :class:`InvalidInputError` for an unknown
    format or mode, a mapped column the file lacks or a file that cannot be read in its format
    at all (nothing is imported then)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file", field="path")
    fmt = fmt or detect_format(path)
    if fmt not in FILE_FORMATS:
        raise InvalidInputError(f"format: must be one of {', '.join(FILE_FORMATS)}, got {fmt!r}", field="format")
    if mode not in MODES:
        raise InvalidInputError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}", field="mode")
    con = connect()
    try:
        load(con, path, mapping, fmt, source)
        canon = Canonicalizer(home, source, protocol="import", context={"library": {"name": "headwater-import"}, "import": {"file": path.name}},
                              id_columns=mapping.id_columns(), where="line" if fmt == "jsonl" else "row", timestamp_column=mapping.timestamp)
        count, oldest = con.execute("SELECT count(*), epoch_us(min(event_ts) FILTER (_error IS NULL)) FROM hw_import").fetchall()[0]
        if mode == "auto":
            if watermark_us is None:
                watermark_us = time.time_ns() // 1000 - DEFAULT_WATERMARK_DELAY_US
            mode = choose(count, oldest, watermark_us)
        ids, rows = indexed(con)
        if mode == "bulk":
            chunk_rows = chunk_rows or bulk.chunk_size(count)
            return bulk.write(home, con, rows, canon, ids, import_id=bulk.import_id(path, fmt, source, mapping, chunk_rows),
                              chunk_rows=chunk_rows, explicit_ids=mapping.event_id is not None)
        tokens = canon.tokenizer.column(ids)
        batches = (with_tokens(b, tokens) for b in con.sql(rows).to_arrow_reader(batch_rows))
        counts = LogSink(home, canon, log=log).write_all(batches)
        return Imported(**vars(counts), path="live")
    finally:
        con.close()


MODES = ("live", "bulk", "auto")
#: A file of at least this many rows takes the bulk path in ``auto`` mode, whatever its dates.
BULK_MIN_ROWS = 100_000
DEFAULT_WATERMARK_DELAY_US = 10 * 60 * 1_000_000  # the default pipeline's watermark delay


def choose(rows: int, oldest_us: int | None, watermark_us: int) -> str:
    """``bulk`` or ``live`` for a file of ``rows`` rows whose oldest good event is at
    ``oldest_us`` (µs since the epoch; None: no good event): bulk from :data:`BULK_MIN_ROWS`
    rows on, or when the file holds history — an event older than the live stream's
    watermark (``watermark_us``), which the stream would take as late; live otherwise (a
    small, recent export also reaches the real-time tables)."""
    if rows >= BULK_MIN_ROWS or (oldest_us is not None and oldest_us < watermark_us):
        return "bulk"
    return "live"


def load(con: duckdb.DuckDBPyConnection, path: Path, mapping: Mapping, fmt: str, source: str) -> None:
    """Read, map and validate every row of ``path`` into DuckDB table ``hw_import``:
    ``_part`` (0: the rows of the file; CSV only: 1: rows re-read as text after a ``CAST``
    reject, 2: lines DuckDB could not parse), then :data:`MAPPED_COLUMNS`. Raises
    :class:`InvalidInputError` when the file cannot be read in its format."""
    try:
        query = _jsonl_query(con, path, mapping) if fmt == "jsonl" else _table_query(con, path, mapping, fmt)
        con.execute(f"CREATE TEMP TABLE hw_import AS SELECT 0 AS _part, {_COLUMNS}, _repeat, _derived FROM ({query})", {"source": source}).fetchall()
    except duckdb.Error as e:
        raise InvalidInputError(f"{path.name}: cannot be read as {fmt}: {e}", field="path") from e
    if fmt == "csv":
        _csv_cast_retry(con, path, mapping, source)
        con.execute(f"INSERT INTO hw_import SELECT 2 AS _part, {_COLUMNS}, NULL::UBIGINT AS _repeat, false AS _derived FROM ({_CSV_REJECTS})").fetchall()
    renumber_repeats(con, "hw_import", source)


def indexed(con: duckdb.DuckDBPyConnection) -> tuple[pa.Array, str]:
    """``(ids, sql)``: the distinct user and anonymous ids of the good rows of ``hw_import``
    (strings), and the SQL of ``hw_import`` with ``user_idx`` / ``anon_idx``, each row's
    positions in ``ids`` — so the ids are tokenised once (one HMAC each) while DuckDB runs
    the query, and a batch gets its tokens by position (:func:`~.canonical.with_tokens`)."""
    ids = con.sql("SELECT DISTINCT v FROM (SELECT user_raw AS v FROM hw_import WHERE _error IS NULL "
                  "UNION ALL SELECT anon_raw FROM hw_import WHERE _error IS NULL) WHERE v IS NOT NULL").to_arrow_table().column(0).combine_chunks()
    con.register("hw_ids", pa.table({"v": ids, "i": pa.array(range(len(ids)), pa.int32())}))
    return ids, ("SELECT m.*, u.i AS user_idx, a.i AS anon_idx FROM hw_import m "
                 "LEFT JOIN hw_ids u ON u.v = m.user_raw AND m._error IS NULL LEFT JOIN hw_ids a ON a.v = m.anon_raw AND m._error IS NULL")


# Typed: a role the mapping leaves out is a NULL literal, which would make a column of no type.
_TYPES = {"_row": "BIGINT", "event_ts": "TIMESTAMPTZ"}
_COLUMNS = ", ".join(f"CAST({c} AS {_TYPES.get(c, 'VARCHAR')}) AS {c}" for c in MAPPED_COLUMNS)


def _table_query(con: duckdb.DuckDBPyConnection, path: Path, mapping: Mapping, fmt: str) -> str:
    if fmt == "csv":
        sniffed = f"read_csv({lit(str(path))}, ignore_errors = true)"  # sniff as tolerantly as the scan reads
    else:
        sniffed = f"read_parquet({lit(str(path))})"
    columns = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {sniffed})").fetchall())
    check_columns(mapping, columns, path.name)
    if fmt == "parquet":
        return _mapped(mapping, _numbered_parquet(path, columns), columns, "row", columns[mapping.timestamp])
    # CSV: mapped columns are read as text, whatever DuckDB's sniffer guessed from its sample —
    # an id "007" stays "007", and a later non-numeric id cannot turn a good row into a
    # conversion error. Property columns keep their sniffed types (numbers stay numbers);
    # rows that fail those conversions are re-read as text (_csv_cast_retry).
    as_text = "{" + ", ".join(f"{lit(c)}: 'VARCHAR'" for c in mapping.roles().values()) + "}"
    scan = f"read_csv({lit(str(path))}, types = {as_text}, store_rejects = true, rejects_table = 'hw_rejects', rejects_scan = 'hw_rejects_scan')"
    # ``row_number() OVER ()`` runs on one thread, and so does every operator of its pipeline:
    # numbered in a materialised CTE of its own, the scan alone is serial, the mapping is not.
    numbered = (f"WITH hw_src AS MATERIALIZED (SELECT row_number() OVER () AS _row, * FROM {scan}) "
                f"SELECT _row, NULL::VARCHAR AS _decode_error, * EXCLUDE (_row) FROM hw_src")
    return _mapped(mapping, numbered, columns, "row", "VARCHAR")


def _numbered_parquet(path: Path, columns: dict[str, str]) -> str:
    """The rows of Parquet file ``path`` (of ``columns``) with ``_row`` (1, 2, … in file order)
    and ``_decode_error``: from the reader's ``file_row_number``, which keeps the scan parallel
    (``row_number() OVER ()`` puts the whole mapping on one thread) — unless the file has a
    column of that name."""
    if "file_row_number" in columns:
        return f"SELECT row_number() OVER () AS _row, NULL::VARCHAR AS _decode_error, * FROM read_parquet({lit(str(path))})"
    return (f"SELECT file_row_number + 1 AS _row, NULL::VARCHAR AS _decode_error, * EXCLUDE (file_row_number) "
            f"FROM read_parquet({lit(str(path))}, file_row_number = true)")


def _mapped(mapping: Mapping, rows: str, columns: dict[str, str], loc: str, ts_type: str) -> str:
    mapped = set(mapping.roles().values())
    others = [c for c in columns if c not in mapped]
    return mapped_query(
        mapping,
        rows=rows,
        value=lambda c: f"src.{ident(c)}",
        others=_struct_json(others) if others else "'{}'",
        payload=_struct_json(list(columns)),
        basis=None,
        loc=loc,
        ts_type=ts_type,
    )


def _csv_cast_retry(con: duckdb.DuckDBPyConnection, path: Path, mapping: Mapping, source: str) -> None:
    """Re-read, with every column as text, the CSV lines DuckDB rejected only because a value
    did not fit the type it sniffed for a property column (``CAST`` rejects), into
    ``hw_import`` (``_part`` 1). Reasons of their bad rows name the original line."""
    # A line that also broke the CSV structure is a decode failure (_CSV_REJECTS), not retried.
    lines = con.sql("SELECT line, any_value(csv_line) AS csv_line FROM hw_rejects GROUP BY line "
                    "HAVING bool_and(error_type = 'CAST') ORDER BY line").fetchall()
    if not lines:
        return
    delim = con.execute(f"SELECT Delimiter FROM sniff_csv({lit(str(path))}, ignore_errors = true)").fetchall()[0][0]
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        header = f.readline().rstrip("\r\n")
    with tempfile.TemporaryDirectory(prefix="hw-import-") as tmp:
        retry = Path(tmp) / "cast_rejects.csv"
        retry.write_text("\n".join([header] + [text for _, text in lines]) + "\n", encoding="utf-8")
        con.register("hw_retry_lines", pa.table({"_i": range(1, len(lines) + 1), "_line": [n for n, _ in lines]}))
        scan = f"read_csv({lit(str(retry))}, all_varchar = true, header = true, delim = {lit(delim)})"
        columns = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {scan})").fetchall())
        rows = (f"SELECT l._line AS _row, NULL::VARCHAR AS _decode_error, s.* EXCLUDE (_i) FROM "
                f"(SELECT row_number() OVER () AS _i, * FROM {scan}) s JOIN hw_retry_lines l USING (_i)")
        query = _mapped(mapping, rows, columns, "line", "VARCHAR")
        con.execute(f"INSERT INTO hw_import SELECT 1 AS _part, {_COLUMNS}, _repeat, _derived FROM ({query})", {"source": source}).fetchall()


def _struct_json(columns: list[str]) -> str:
    return "CAST(to_json(struct_pack(" + ", ".join(f"{ident(c)} := src.{ident(c)}" for c in columns) + ")) AS VARCHAR)"


def _jsonl_query(con: duckdb.DuckDBPyConnection, path: Path, mapping: Mapping) -> str:
    batches = (b for lb in read_lines(path) for b in lb.lines.to_batches())
    con.register("hw_lines", pa.RecordBatchReader.from_batches(LINES_SCHEMA, batches))
    obj, err = object_sql("jsonl")
    return mapped_query(mapping, **json_object_parts(mapping, f"SELECT _row, _offset, line, {err} AS _decode_error, {obj} AS _obj FROM hw_lines"),
                        basis=None, loc="line")


def json_object_parts(mapping: Mapping, rows: str) -> dict:
    """``rows`` / ``value`` / ``others`` / ``payload`` arguments of :func:`mapped_query` for
    rows carrying a JSON object ``_obj`` and the input ``line``: a mapped column is a
    top-level key; the properties are the object without the mapped keys (RFC 7396 merge
    patch with nulls)."""
    remove = json.dumps({c: None for c in mapping.roles().values()})
    return {
        "rows": rows,
        "value": lambda c: f"json_extract_string(_obj, {lit('$.' + json.dumps(c))})",
        "others": f"CAST(json_merge_patch(_obj, {lit(remove)}) AS VARCHAR)",
        "payload": "line",
    }


# CSV lines DuckDB could not parse (wrong number of fields, unterminated quote), as
# decode_failure bad rows naming the line; the payload stays empty (module doc).
_CSV_REJECTS = """
    SELECT line AS _row, 'decode_failure' AS _error_type,
           'line ' || line || ': ' || error_type || ': ' || error_message AS _error,
           NULL::VARCHAR AS _payload, NULL::VARCHAR AS event_id, NULL::VARCHAR AS event_type, NULL::VARCHAR AS event_name,
           NULL::VARCHAR AS user_raw, NULL::VARCHAR AS anon_raw, NULL::TIMESTAMPTZ AS event_ts, NULL::VARCHAR AS properties,
           NULL::VARCHAR AS platform
    FROM hw_rejects WHERE error_type <> 'CAST'
"""
