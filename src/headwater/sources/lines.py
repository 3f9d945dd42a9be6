"""Line-oriented input read in byte ranges, as Arrow batches, and turned into JSON objects in SQL.

:func:`read_lines` reads a file from a byte offset in blocks, cut at the last newline of
each block, and splits each block into lines with one Arrow kernel (``split_pattern``): no
per-line Python. Each batch carries the line number and the byte offset of every line, so
a reader can resume exactly after the last complete line it processed (``end_offset``,
``end_line``), as ``tail -F`` resumes from a position.

:func:`object_sql` is the DuckDB expression set that makes a JSON object of each line —
the line itself for JSON lines, or the ``key=value | key=value`` pairs for key-value logs —
plus a decode error naming the line and the rule for lines that are neither. Line sources
then map those objects like any other source (:mod:`.mapping`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.errors import InvalidInputError
from headwater.sources.mapping import quoted


LINES_SCHEMA = pa.schema(
    [
        pa.field("_row", pa.int64(), nullable=False),  # 1-based line number in the file
        pa.field("_offset", pa.int64(), nullable=False),  # byte offset of the line's first byte
        pa.field("line", pa.string()),  # without the newline (and a trailing \r); null: invalid UTF-8
    ]
)

FORMATS = ("jsonl", "kv")


@dataclass(frozen=True)
class LineBatch:
    """Non-blank lines of one block (``LINES_SCHEMA``); ``end_offset`` / ``end_line``: the byte
    offset and line number just after the block (where the next read starts)."""

    lines: pa.Table
    end_offset: int
    end_line: int


def read_lines(path: Path, start: int = 0, first_line: int = 1, *, block_bytes: int = 8 << 20, final: bool = True) -> Iterator[LineBatch]:
    """Lines of ``path`` from byte ``start`` (line number ``first_line``), in blocks of about
    ``block_bytes``. A last line without a newline is returned only when ``final`` (a whole
    file being imported); a follower leaves it for the next read, as it may still be written.
    Raises ``FileNotFoundError``."""
    with open(path, "rb") as f:
        f.seek(start)
        pending = b""
        offset, line_no = start, first_line
        while True:
            block = f.read(block_bytes)
            data = pending + block
            at_eof = len(block) == 0
            cut = len(data) if (at_eof and final) else data.rfind(b"\n") + 1
            if cut == 0:
                if at_eof:
                    return
                pending = data  # a line longer than the block: read on
                continue
            chunk, pending = data[:cut], data[cut:]
            batch = _split(chunk, offset, line_no)
            offset += len(chunk)
            line_no += chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
            yield LineBatch(batch, offset, line_no)
            if at_eof:
                return


def _split(chunk: bytes, offset: int, line_no: int) -> pa.Table:
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    lines = pc.split_pattern(pa.array([body], pa.binary()), b"\n").flatten()
    lengths = pc.binary_length(lines).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = offset + np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
    numbers = np.arange(line_no, line_no + len(lines), dtype=np.int64)
    try:
        text = lines.cast(pa.string())
    except pa.ArrowInvalid:  # some line is not UTF-8: find which (rare path)
        text = pa.array([_utf8_or_none(b) for b in lines.to_pylist()], pa.string())
    text = pc.utf8_rtrim(text, "\r")
    keep = pc.fill_null(pc.invert(pc.equal(pc.utf8_trim_whitespace(text), "")), True)
    return pa.Table.from_arrays([pa.array(numbers), pa.array(starts), text], schema=LINES_SCHEMA).filter(keep)


def _utf8_or_none(b: bytes) -> str | None:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return None


def object_sql(fmt: str, loc: str = "line") -> tuple[str, str]:
    """``(object, decode_error)`` DuckDB expressions over a ``LINES_SCHEMA`` row: the line
    as JSON object text, and the reason it cannot be one (NULL when it can).

    ``jsonl``: the line must be a JSON object. ``kv``: ``key=value`` fields separated by
    ``|``, spaces around them ignored; keys must be unique and non-empty; a value that is a
    plain decimal number becomes a JSON number, any other value a JSON string (the value may
    contain ``=``, not ``|``)."""
    where = f"'{loc} ' || _row || ': '"
    bad_utf8 = f"WHEN line IS NULL THEN {where} || 'invalid UTF-8 (log lines must be UTF-8 text)'"
    if fmt == "jsonl":
        obj = "CASE WHEN json_valid(line) AND json_type(line) = 'OBJECT' THEN line END"
        err = (
            f"CASE {bad_utf8} "
            f"WHEN NOT json_valid(line) THEN {where} || 'not valid JSON (each line must be one JSON object)' "
            f"WHEN json_type(line) <> 'OBJECT' THEN {where} || 'JSON ' || lower(json_type(line)) || ', expected an object' END"
        )
        return obj, err
    if fmt != "kv":
        raise InvalidInputError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}", field="format")
    fields = "list_transform(string_split(line, '|'), lambda p: trim(p))"
    keys = f"list_transform({fields}, lambda p: trim(split_part(p, '=', 1)))"
    malformed = f"list_filter({fields}, lambda p: strpos(p, '=') = 0 OR trim(split_part(p, '=', 1)) = '')"
    value = "trim(substr(p, strpos(p, '=') + 1))"
    json_value = f"CASE WHEN regexp_full_match({value}, '-?(0|[1-9][0-9]{{0,17}})(\\.[0-9]+)?') THEN {value} ELSE to_json({value}) END"
    obj = f"'{{' || array_to_string(list_transform({fields}, lambda p: to_json(trim(split_part(p, '=', 1))) || ':' || {json_value}), ',') || '}}'"
    err = (
        f"CASE {bad_utf8} "
        f"WHEN len({malformed}) > 0 THEN {where} || 'field ' || {quoted(malformed + '[1]')} || ' is not key=value (fields are key=value separated by |)' "
        f"WHEN len(list_distinct({keys})) < len({keys}) THEN {where} || 'duplicate key (each key may appear once per line)' END"
    )
    return f"CASE WHEN ({err}) IS NULL THEN {obj} END", err


def file_identity(path: Path) -> tuple[int, int]:
    """``(device, inode)`` of ``path``: a follower notices a rotated file by its change."""
    st = os.stat(path)
    return st.st_dev, st.st_ino

