"""Decoder of PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

Spec: PostgreSQL 15 docs, "Logical Replication Message Formats"
(https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html). Each message
is one ``bytea`` row of ``pg_logical_slot_peek_binary_changes``: a one-byte tag, then
big-endian fields; strings are NUL-terminated; timestamps are µs since 2000-01-01 UTC.

Handled: Begin ``B``, Commit ``C``, Relation ``R`` (column names, type OIDs, key flags),
Insert ``I``, Update ``U`` (old tuple ``K``/``O`` when the replica identity sends one),
Delete ``D``, Truncate ``T``; Origin ``O`` and Type ``Y`` are read and ignored. Column values
arrive in text format; integers, floats and booleans become Python numbers / bools, every
other type keeps Postgres' text form (``numeric`` stays exact, timestamps are ISO-like
text). ``u`` (an unchanged TOASTed value, not sent) takes the value of the old tuple when
there is one, else the column is left out of the image.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass, field

from headwater.errors import InvalidInputError

PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_PG_EPOCH_US = 946_684_800_000_000  # PG_EPOCH in µs since the Unix epoch

# Type OIDs (pg_type.dat) converted from text; everything else stays text.
_INTS = {20, 21, 23, 26}  # int8 int2 int4 oid
_FLOATS = {700, 701}  # float4 float8
_BOOL = 16


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    is_key: bool


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    columns: tuple[Column, ...]


@dataclass
class Change:
    """One row change: ``op`` is ``insert`` / ``update`` / ``delete`` / ``truncate``;
    ``before`` / ``after``: the row images as ``{column: value}`` (None when not sent)."""

    op: str
    relation: Relation
    lsn: int
    seq: int
    before: dict | None = None
    after: dict | None = None


@dataclass
class Transaction:
    """A committed transaction: ``end_lsn`` is the position just past its commit record
    (where a consumer resumes, what ``pg_replication_slot_advance`` confirms);
    ``commit_us``: commit time, µs since the Unix epoch (UTC)."""

    xid: int
    commit_lsn: int = 0
    end_lsn: int = 0
    commit_us: int = 0
    changes: list[Change] = field(default_factory=list)


class Decoder:
    """Stateful decoder: Relation messages are remembered (pgoutput sends a relation once per
    session before its first change). Feed messages in order with :meth:`feed`; a completed
    :class:`Transaction` is returned at its Commit message, None otherwise.
    Raises ``ValueError`` for an unknown tag or a change of an unknown relation."""

    def __init__(self):
        self.relations: dict[int, Relation] = {}
        self._txn: Transaction | None = None

    def feed(self, lsn: int, data: bytes) -> Transaction | None:
        tag = data[:1]
        r = _Reader(data, 1)
        if tag == b"B":
            r.int64()  # final LSN of the transaction (= commit LSN)
            r.int64()  # commit timestamp (repeated in Commit)
            self._txn = Transaction(xid=r.int32())
        elif tag == b"C":
            r.int8()  # flags (unused)
            txn = self._txn
            txn.commit_lsn, txn.end_lsn = r.int64(), r.int64()
            txn.commit_us = r.int64() + _PG_EPOCH_US
            self._txn = None
            return txn
        elif tag == b"R":
            oid, schema, name = r.int32(), r.string(), r.string()
            r.int8()  # replica identity setting
            cols = []
            for _ in range(r.int16()):
                flags, cname, type_oid = r.int8(), r.string(), r.int32()
                r.int32()  # type modifier
                cols.append(Column(cname, type_oid, bool(flags & 1)))
            self.relations[oid] = Relation(oid, schema, name, tuple(cols))
        elif tag in (b"I", b"U", b"D"):
            rel = self._relation(r.int32())
            seq = len(self._txn.changes)
            if tag == b"I":
                r.byte()  # 'N'
                self._txn.changes.append(Change("insert", rel, lsn, seq, after=r.tuple(rel)))
            elif tag == b"D":
                r.byte()  # 'K' (key columns only) or 'O' (whole old row)
                self._txn.changes.append(Change("delete", rel, lsn, seq, before=r.tuple(rel)))
            else:
                before = None
                kind = r.byte()
                if kind in (b"K", b"O"):
                    before = r.tuple(rel)
                    kind = r.byte()
                self._txn.changes.append(Change("update", rel, lsn, seq, before=before, after=r.tuple(rel, before)))
        elif tag == b"T":
            n = r.int32()
            r.int8()  # options (CASCADE / RESTART IDENTITY)
            for _ in range(n):
                rel = self._relation(r.int32())
                self._txn.changes.append(Change("truncate", rel, lsn, len(self._txn.changes)))
        elif tag not in (b"O", b"Y", b"M"):
            raise InvalidInputError(f"pgoutput: unknown message tag {tag!r} at LSN {format_lsn(lsn)}")
        return None

    def _relation(self, oid: int) -> Relation:
        rel = self.relations.get(oid)
        if rel is None:
            raise InvalidInputError(f"pgoutput: change of relation {oid} before its Relation message")
        return rel


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def _unpack(self, fmt: str, size: int):
        v = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += size
        return v

    def int8(self) -> int:
        return self._unpack(">b", 1)

    def int16(self) -> int:
        return self._unpack(">h", 2)

    def int32(self) -> int:
        return self._unpack(">i", 4)

    def int64(self) -> int:
        return self._unpack(">q", 8)

    def byte(self) -> bytes:
        b = self.data[self.pos : self.pos + 1]
        self.pos += 1
        return b

    def string(self) -> str:
        end = self.data.index(b"\0", self.pos)
        s = self.data[self.pos : end].decode()
        self.pos = end + 1
        return s

    def tuple(self, rel: Relation, old: dict | None = None) -> dict:
        out = {}
        for i in range(self.int16()):
            col = rel.columns[i]
            kind = self.byte()
            if kind == b"n":
                out[col.name] = None
            elif kind == b"u":  # unchanged TOAST value: not sent
                if old is not None and col.name in old:
                    out[col.name] = old[col.name]
            elif kind == b"t":
                n = self.int32()
                out[col.name] = text_value(self.data[self.pos : self.pos + n].decode(), col.type_oid)
                self.pos += n
            else:
                raise InvalidInputError(f"pgoutput: unexpected tuple value kind {kind!r} (binary mode is not requested)")
        return out


def text_value(text: str, type_oid: int):
    """A column value from Postgres' text output of type ``type_oid`` (see the module doc)."""
    if type_oid in _INTS:
        return int(text)
    if type_oid in _FLOATS:
        f = float(text)
        return f if f == f and f not in (float("inf"), float("-inf")) else text  # NaN/Infinity: not JSON numbers
    if type_oid == _BOOL:
        return text == "t"
    return text


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` → the 64-bit WAL position."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    """The 64-bit WAL position as Postgres writes it, e.g. ``"16/B374D848"``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
