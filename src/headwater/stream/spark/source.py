"""The event log as a Spark Structured Streaming source (a Python ``DataSourceStreamReader``).

Spark's Kafka source is a Maven JAR this machine cannot fetch, and on a cluster it is
configuration; here the embedded :class:`~headwater.log.sqlite.SqliteLog` is read through
Spark's Python data source API (``pyspark.sql.datasource``, Spark ≥ 4.0):

- **offset** = ``{"<partition>": next offset}`` per log partition (offsets count events,
  like Kafka's), serialised by Spark into its own ``offsets/N`` checkpoint files;
- ``latestOffset(start, limit)`` decides each micro-batch's end — the **batch boundaries**:
  * ``maxRecordsPerPartition=N``: ``end = min(log end, start + N)`` per partition — the
    rule of headwater's engine (``StreamConfig.max_records_per_partition``), so that both
    engines cut the same batches from the same log;
  * ``replayOffsets=<checkpoint dir>/offsets``: the ``[start, end)`` ranges recorded by a
    headwater query, looked up by ``start`` — Spark re-runs headwater's batches exactly;
  * neither: everything in the log (one batch per trigger);
- ``Trigger.AvailableNow`` (``SupportsTriggerAvailableNow``): the log end at query start is
  the target; no batch reads past it;
- ``read`` decodes the Arrow IPC payloads (:func:`headwater.log.codec.decode`) into Arrow
  record batches: no per-event Python. A record that does not decode becomes ONE row with
  ``_error`` set, the raw ``_payload`` and null event columns, so the sink can dead-letter
  it (design.md: bad input never blocks and is never lost).

Schema (:data:`SCHEMA`): the canonical event columns (:data:`headwater.events.EVENT_SCHEMA`)
plus ``_partition`` (int), ``_offset`` (bigint: the event's log offset; for a dead letter the
record's first offset), ``_appended_ms`` (bigint: log append time, ms since epoch UTC),
``_count`` (int: events in the source record), ``_error`` (string) and ``_payload`` (binary).

Register with :func:`register` and read with
``spark.readStream.format("headwater_log").option("path", str(home.log_path)).load()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import SupportsTriggerAvailableNow

from headwater.events import EVENT_SCHEMA, EVENTS_TOPIC
from headwater.log.codec import decode
from headwater.log.sqlite import SqliteLog

NAME = "headwater_log"

SCHEMA = pa.schema(
    [f.with_nullable(True) for f in EVENT_SCHEMA]
    + [
        pa.field("_partition", pa.int32()),
        pa.field("_offset", pa.int64()),
        pa.field("_appended_ms", pa.int64()),
        pa.field("_count", pa.int32()),
        pa.field("_error", pa.string()),
        pa.field("_payload", pa.binary()),
    ]
)

_SPARK_TYPES = {
    pa.string(): "STRING",
    pa.int32(): "INT",
    pa.int64(): "BIGINT",
    pa.binary(): "BINARY",
    pa.date32(): "DATE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP",
}
DDL = ", ".join(f"`{f.name}` {_SPARK_TYPES[f.type]}" for f in SCHEMA)


def replay_plan(offsets_dir: Path, topic: str = EVENTS_TOPIC) -> dict[str, dict[str, int]]:
    """The batch boundaries of a headwater query: ``{json(start): end}`` over the
    ``offsets/N`` files in ``offsets_dir`` (format of :class:`headwater.stream.checkpoint.Checkpoint`:
    ``{topic: {partition: [start, end)}}``). Batches whose ``topic`` range is empty are skipped
    (they read nothing from it). Raises ``FileNotFoundError`` if the directory is missing."""
    plan: dict[str, dict[str, int]] = {}
    files = sorted((p for p in Path(offsets_dir).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for path in files:
        ranges = json.loads(path.read_text()).get(topic, {})
        start = {p: r[0] for p, r in ranges.items()}
        end = {p: r[1] for p, r in ranges.items()}
        if start != end:
            plan[_key(start)] = end
    return plan


def _key(offset: dict[str, int]) -> str:
    return json.dumps({str(p): int(o) for p, o in offset.items()}, sort_keys=True)


class LogDataSource(DataSource):
    """``spark.readStream.format("headwater_log")``; options: ``path`` (the SQLite log file,
    required), ``topic`` (default ``events``), ``maxRecordsPerPartition`` (int),
    ``replayOffsets`` (directory of a headwater checkpoint's offsets files)."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return DDL

    def streamReader(self, schema) -> "LogStreamReader":
        if "path" not in self.options:
            raise ValueError("option `path`: the event log file (home.log_path) is required")
        if not Path(self.options["path"]).is_file():
            raise FileNotFoundError(f"option `path`: no event log at {self.options['path']}")
        cap = self.options.get("maxRecordsPerPartition")
        if cap is not None and not (str(cap).isdigit() and int(cap) > 0):
            raise ValueError(f"option `maxRecordsPerPartition`: must be a positive integer, got {cap!r}")
        replay = self.options.get("replayOffsets")
        return LogStreamReader(
            path=self.options["path"],
            topic=self.options.get("topic", EVENTS_TOPIC),
            max_records_per_partition=int(cap) if cap is not None else None,
            plan=replay_plan(Path(replay), self.options.get("topic", EVENTS_TOPIC)) if replay else None,
        )


class _Range(InputPartition):
    def __init__(self, path: str, topic: str, partition: int, start: int, end: int):
        super().__init__((partition, start, end))
        self.path, self.topic, self.partition, self.start, self.end = path, topic, partition, start, end


class LogStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Offsets and reads of one topic of the log (see the module docstring)."""

    def __init__(self, path: str, topic: str, max_records_per_partition: int | None, plan: dict[str, dict[str, int]] | None):
        self.path, self.topic = path, topic
        self.cap = max_records_per_partition
        self.plan = plan
        self.target: dict[str, int] | None = None
        self._log: SqliteLog | None = None  # opened on first use, in the planner worker

    def _ends(self) -> dict[str, int]:
        if self._log is None:
            self._log = SqliteLog(Path(self.path))
        return {str(p): e for p, e in self._log.end_offsets(self.topic).items()}

    def stop(self) -> None:
        if self._log is not None:
            self._log.close()

    def initialOffset(self) -> dict:
        return {p: 0 for p in self._ends()}

    def prepareForTriggerAvailableNow(self) -> None:
        self.target = self._ends()

    def latestOffset(self, start: dict, limit) -> dict:
        if self.plan is not None:
            return self.plan.get(_key(start), start)
        ends = self.target if self.target is not None else self._ends()
        out = {}
        for p, end in ends.items():
            s = int(start.get(p, 0))
            out[p] = max(s, min(end, s + self.cap) if self.cap else end)
        return out

    def reportLatestOffset(self) -> dict:
        return self._ends()

    def partitions(self, start: dict, end: dict) -> list[InputPartition]:
        return [
            _Range(self.path, self.topic, int(p), int(start.get(p, 0)), int(e))
            for p, e in sorted(end.items(), key=lambda kv: int(kv[0]))
            if int(e) > int(start.get(p, 0))
        ]

    def read(self, partition: _Range) -> Iterator[pa.RecordBatch]:
        yield from read_range(Path(partition.path), partition.topic, partition.partition, partition.start, partition.end)


def read_range(path: Path, topic: str, partition: int, start: int, end: int) -> Iterator[pa.RecordBatch]:
    """Events ``[start, end)`` of one log partition as record batches of :data:`SCHEMA`."""
    log = SqliteLog(path)
    try:
        records = log.read(topic, partition, start, end)
    finally:
        log.close()
    # One decode per record keeps _appended_ms per record (it is per-record in the log).
    for rec in records:
        table, bad = decode([rec], start, end)
        if table is not None:
            n = table.num_rows
            cols = [table[f.name].cast(f.type) for f in SCHEMA if f.name in EVENT_SCHEMA.names]
            cols += [
                table["_partition"],
                table["_offset"],
                pa.array(np.full(n, rec.appended_ms, np.int64)),
                pa.array(np.full(n, rec.count, np.int32)),
                pa.nulls(n, pa.string()),
                pa.nulls(n, pa.binary()),
            ]
            yield from pa.Table.from_arrays(cols, schema=SCHEMA).to_batches()
        # A record spanning two batches is read by both: dead-letter it in the batch that
        # holds its first offset only.
        for b in (b for b in bad if b.record.offset >= start):
            row = {f.name: None for f in SCHEMA}
            row.update(
                _partition=partition, _offset=b.record.offset, _appended_ms=b.record.appended_ms,
                _count=b.record.count, _error=b.error, _payload=b.record.payload,
            )
            yield pa.RecordBatch.from_pylist([row], schema=SCHEMA)


def register(spark) -> None:
    """Register :class:`LogDataSource` with ``spark`` (idempotent)."""
    spark.dataSource.register(LogDataSource)
