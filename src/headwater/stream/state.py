"""Versioned state store of the window operators (Spark's HDFS-backed state store design).

Spark's ``HDFSBackedStateStoreProvider`` keeps, per operator, a file per state version =
batch id (``N.delta`` / ``N.snapshot``) next to the offset and commit logs; the state after
batch N is version N, and recovery loads the version of the last *committed* batch. This
store writes one snapshot per batch — the state here is small and bounded (open windows and
sessions only: a window is dropped once it closes, see :mod:`headwater.stream.aggregate`),
so a full snapshot costs less than replaying deltas:

``state/windows/<N>.arrow``: an Arrow IPC file with one row per named table, columns
``name`` (string) and ``ipc`` (binary: that table as an Arrow IPC stream), and schema
metadata ``meta`` (JSON: watermark clocks and other scalars).

Protocol (with :mod:`headwater.stream.checkpoint`): batch N writes version N after its sinks
and before ``commits/N``. On restart :meth:`load` reads the version of the last committed
batch C and deletes any newer version (left by a batch that did not commit: it is re-run
from C). After saving N, versions below N−1 are deleted: C = N−1 must survive until
``commits/N`` exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from headwater.files import write_atomic


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


class StateStore:
    """Snapshots ``{name: pa.Table}`` + a JSON ``meta`` dict per batch id under ``directory``."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _versions(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.arrow") if p.stem.isdigit())

    def save(self, version: int, tables: dict[str, pa.Table], meta: dict[str, Any]) -> None:
        """Write version ``version`` atomically, then drop versions older than ``version − 1``."""
        names = sorted(tables)
        index = pa.table({"name": names, "ipc": pa.array([_ipc(tables[n]) for n in names], pa.binary())})
        index = index.replace_schema_metadata({"meta": json.dumps(meta)})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, index.schema) as w:
            w.write_table(index)
        write_atomic(self.dir / f"{version}.arrow", sink.getvalue().to_pybytes())
        for v in self._versions():
            if v < version - 1:
                (self.dir / f"{v}.arrow").unlink(missing_ok=True)

    def load(self, version: int | None) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        """Tables and meta of ``version`` (``({}, {})`` for ``None``); newer versions are
        deleted. ``FileNotFoundError`` if that version is missing (a damaged checkpoint)."""
        for v in self._versions():
            if version is None or v > version:
                (self.dir / f"{v}.arrow").unlink(missing_ok=True)
        if version is None:
            return {}, {}
        path = self.dir / f"{version}.arrow"
        with pa.memory_map(str(path)) as src:
            index = pa.ipc.open_file(src).read_all()
        meta = json.loads(index.schema.metadata[b"meta"])
        tables = {
            name: pa.ipc.open_stream(blob).read_all()
            for name, blob in zip(index.column("name").to_pylist(), index.column("ipc").to_pylist())
        }
        return tables, meta

    def size_bytes(self, version: int) -> int:
        """Bytes of snapshot ``version`` on disk (for metrics)."""
        return (self.dir / f"{version}.arrow").stat().st_size
