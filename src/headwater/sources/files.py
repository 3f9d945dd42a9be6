"""``headwater import PATH``: CSV, JSON lines and Parquet exports → the event log.

One DuckDB query per file does the work (:func:`headwater.sources.mapping.mapped_query`):
DuckDB reads the file (``read_csv`` / ``read_parquet``; JSON lines through
:func:`headwater.sources.lines.read_lines`, so a malformed line has an exact line number),
maps and validates every row and derives event ids; its result streams out as Arrow record
batches of ``batch_rows`` rows, each written by :class:`~headwater.sources.canonical.LogSink`
(tokenise, PII policy, partition, one log transaction per batch, the append of one batch
overlapping the preparation of the next).

Bad input: a CSV line DuckDB cannot parse (wrong number of fields, unterminated quote) is
kept aside by DuckDB's ``store_rejects`` and becomes a ``decode_failure`` bad row naming the
line (payload left empty: a line that does not split into fields cannot have its identifier
field tokenised); a JSON line that is not a JSON object is a ``decode_failure`` with the line
as payload; a row that breaks a mapping rule is an ``envelope_violation`` naming the row,
the column and the rule (CSV / Parquet: ``row N`` = the N-th data row read, header and
rejected lines not counted; JSON lines: ``line N``). Good rows of the file are imported either way.

Re-importing a file (after a crash mid-import, or by mistake) appends the same event ids
again: the stream's dedup drops them within its TTL, ``silver.events`` exactly.
Memory: the derived-id window (occurrence number of identical rows) makes DuckDB hold the
mapped rows of the whole file before the first batch is written (it spills to disk when
they exceed its memory limit).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa

from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.log.base import EventLog
from headwater.sources.canonical import Counts, LogSink
from headwater.sources.lines import LINES_SCHEMA, object_sql, read_lines
from headwater.sources.mapping import Mapping, check_columns, ident, lit, mapped_query

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
    batch_rows: int = 200_000,
    log: EventLog | None = None,
) -> Counts:
    """Import ``path`` into the event log as events of ``source``; returns the counts.

    ``fmt``: ``csv``, ``jsonl`` or ``parquet`` (default: from the file name). Raises
    :class:`NotFoundError` for a missing file, :class:`InvalidInputError` for an unknown
    format, a mapped column the file lacks or a file that cannot be read in its format at all
    (nothing is imported then)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file", field="path")
    fmt = fmt or detect_format(path)
    if fmt not in FILE_FORMATS:
        raise InvalidInputError(f"format: must be one of {', '.join(FILE_FORMATS)}, got {fmt!r}", field="format")
    con = connect()
    try:
        try:
            query = _jsonl_query(con, path, mapping) if fmt == "jsonl" else _table_query(con, path, mapping, fmt)
        except duckdb.Error as e:
            raise InvalidInputError(f"{path.name}: cannot be read as {fmt}: {e}", field="path") from e
        sink = LogSink(home, source, protocol="import", context={"library": {"name": "headwater-import"}, "import": {"file": path.name}},
                       id_columns=mapping.id_columns(), log=log, where="line" if fmt == "jsonl" else "row", timestamp_column=mapping.timestamp)
        counts = sink.write_all(con.sql(query, params={"source": source}).to_arrow_reader(batch_rows))
        if fmt == "csv":
            counts.add(_csv_cast_retry(con, path, mapping, sink, batch_rows))
            counts.add(_csv_rejects(con, sink))
        return counts
    finally:
        con.close()


def _table_query(con: duckdb.DuckDBPyConnection, path: Path, mapping: Mapping, fmt: str) -> str:
    if fmt == "csv":
        sniffed = f"read_csv({lit(str(path))}, ignore_errors = true)"  # sniff as tolerantly as the scan reads
    else:
        sniffed = f"read_parquet({lit(str(path))})"
    columns = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {sniffed})").fetchall())
    check_columns(mapping, columns, path.name)
    if fmt == "parquet":
        return _mapped(mapping, f"SELECT row_number() OVER () AS _row, NULL::VARCHAR AS _decode_error, * FROM {sniffed}", columns, "row", columns[mapping.timestamp])
    # CSV: mapped columns are read as text, whatever DuckDB's sniffer guessed from its sample —
    # an id "007" stays "007", and a later non-numeric id cannot turn a good row into a
    # conversion error. Property columns keep their sniffed types (numbers stay numbers);
    # rows that fail those conversions are re-read as text (_csv_cast_retry).
    as_text = "{" + ", ".join(f"{lit(c)}: 'VARCHAR'" for c in mapping.roles().values()) + "}"
    scan = f"read_csv({lit(str(path))}, types = {as_text}, store_rejects = true, rejects_table = 'hw_rejects', rejects_scan = 'hw_rejects_scan')"
    return _mapped(mapping, f"SELECT row_number() OVER () AS _row, NULL::VARCHAR AS _decode_error, * FROM {scan}", columns, "row", "VARCHAR")


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


def _csv_cast_retry(con: duckdb.DuckDBPyConnection, path: Path, mapping: Mapping, sink: LogSink, batch_rows: int) -> Counts:
    """Re-read, with every column as text, the CSV lines DuckDB rejected only because a value
    did not fit the type it sniffed for a property column (``CAST`` rejects), and import them.
    Reasons of their bad rows name the original line."""
    lines = con.sql("SELECT line, any_value(csv_line) AS csv_line FROM hw_rejects WHERE error_type = 'CAST' GROUP BY line ORDER BY line").fetchall()
    if not lines:
        return Counts()
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
        return sink.write_all(con.sql(query, params={"source": sink.source}).to_arrow_reader(batch_rows))


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


def _csv_rejects(con: duckdb.DuckDBPyConnection, sink: LogSink) -> Counts:
    rejects = con.sql(
        """
        SELECT line AS _row, 'decode_failure' AS _error_type,
               'line ' || line || ': ' || error_type || ': ' || error_message AS _error,
               NULL::VARCHAR AS _payload
        FROM hw_rejects WHERE error_type <> 'CAST' ORDER BY line
        """
    ).to_arrow_table()
    if rejects.num_rows == 0:
        return Counts()
    return sink.write(rejects)
