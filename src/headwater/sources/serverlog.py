"""Server logs → the event log: line-oriented files read from a stored byte offset.

A :class:`ServerLog` reads the complete lines of a log file past its stored position
(``<home>/sources/serverlog/<name>.json``: file identity, byte offset, line number), turns
them into canonical events (``kv``: ``key=value | key=value …``; ``jsonl``: one JSON object
per line; then a :class:`~headwater.sources.mapping.Mapping`), appends them to the event log
and then stores the new position — like ``tail -F``: :meth:`ServerLog.follow` polls the file
as it grows and starts again at byte 0 when the file was rotated (another inode at the path)
or truncated (smaller than the stored offset). A last line without its newline is left for
the next poll: it may still be being written.

Malformed lines never stop the reader: each is counted and dead-lettered as a bad row
(``decode_failure``, reason ``line N: …``, the line as payload with identifiers tokenised);
a line that decodes but breaks a mapping rule is an ``envelope_violation``.

Delivery: at least once into the log, exactly once after dedup. The position is stored
after the append commits, so a crash between the two re-reads those lines; their event ids
are derived from the line's byte offset and text, hence the same, and the stream's dedup
(and ``silver.events``) remove the copies.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.files import write_atomic
from headwater.log.base import EventLog
from headwater.sources.canonical import Canonicalizer, Counts, LogSink
from headwater.sources.files import connect, json_object_parts
from headwater.sources.lines import FORMATS, file_identity, object_sql, read_lines
from headwater.sources.mapping import Mapping, mapped_query

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class Position:
    """Where reading resumes: ``offset`` (bytes) / ``line`` (next line number) in the file
    with identity ``(dev, ino)``."""

    dev: int = 0
    ino: int = 0
    offset: int = 0
    line: int = 1


class ServerLog:
    """One followed log file. ``name`` keys the stored position (default: the file name);
    ``fmt``: ``kv`` or ``jsonl``; events get ``source=source`` and ``platform="server"``.
    Raises :class:`~headwater.errors.InvalidInputError` for an unknown format or a name that is not ``[A-Za-z0-9_.-]+``."""

    def __init__(self, home: Home, path: Path, mapping: Mapping, *, fmt: str = "kv", source: str = "serverlog",
                 name: str | None = None, log: EventLog | None = None, block_bytes: int = 8 << 20):
        if fmt not in FORMATS:
            raise InvalidInputError(f"format: must be one of {', '.join(FORMATS)}, got {fmt!r}", field="format")
        self.path = Path(path)
        self.name = name or self.path.name
        if not _NAME.match(self.name):
            raise InvalidInputError(f"name: {self.name!r} must match [A-Za-z0-9_.-]+", field="name")
        self.state_path = home.root / "sources" / "serverlog" / f"{self.name}.json"
        self.block_bytes = block_bytes
        canon = Canonicalizer(home, source, protocol="serverlog", context={"library": {"name": "headwater-serverlog"}, "log": {"file": self.path.name}},
                              id_columns=mapping.id_columns(), where="line", timestamp_column=mapping.timestamp)
        self.sink = LogSink(home, canon, log=log)
        obj, err = object_sql(fmt)
        parts = json_object_parts(mapping, f"SELECT _row, _offset, line, {err} AS _decode_error, {obj} AS _obj FROM hw_lines")
        self.query = mapped_query(mapping, **parts, basis="CAST(_offset AS VARCHAR) || chr(31) || line", loc="line")
        self.con = connect()

    def position(self) -> Position:
        """The stored position (the start of the file when none is stored)."""
        if not self.state_path.exists():
            return Position()
        return Position(**json.loads(self.state_path.read_text()))

    def _store(self, pos: Position) -> None:
        write_atomic(self.state_path, json.dumps(pos.__dict__).encode())

    def poll(self) -> Counts:
        """Read every complete line past the stored position; returns what was read.
        A missing file reads as empty (it may be between rotation and re-creation)."""
        counts = Counts()
        try:
            dev, ino = file_identity(self.path)
            size = self.path.stat().st_size
        except FileNotFoundError:
            return counts
        pos = self.position()
        if (pos.dev, pos.ino) != (dev, ino) or size < pos.offset:  # rotated or truncated: from the top
            pos = Position(dev, ino)
        for batch in read_lines(self.path, pos.offset, pos.line, block_bytes=self.block_bytes, final=False):
            if batch.lines.num_rows:
                self.con.register("hw_lines", batch.lines)
                counts.add(self.sink.write(self.con.sql(self.query, params={"source": self.sink.source}).to_arrow_table()))
            # After the append committed: a crash before this line re-reads the batch (same ids).
            self._store(Position(dev, ino, batch.end_offset, batch.end_line))
        return counts

    def follow(self, stop: threading.Event, interval_s: float = 0.5, on_poll=None) -> Counts:
        """Poll until ``stop`` is set, waiting ``interval_s`` between polls that found
        nothing; ``on_poll(counts)`` after each poll that read lines. Returns the totals."""
        total = Counts()
        while not stop.is_set():
            counts = self.poll()
            total.add(counts)
            if counts.rows:
                if on_poll:
                    on_poll(counts)
            else:
                stop.wait(interval_s)
        return total

    def close(self) -> None:
        self.con.close()
