"""The event log as a Spark Structured Streaming source (a Python ``DataSourceStreamReader``).

Spark's Kafka source is a Maven JAR this machine cannot fetch, and on a cluster it is
configuration; here the event log at a ``log.url`` (:func:`headwater.log.open_log`, any
backend) is read through Spark's Python data source API (``pyspark.sql.datasource``,
Spark ≥ 4.0):

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
- ``startingOffsets={"<partition>": offset}``: where a query without a checkpoint starts
  (default: each partition's first offset), as Spark's Kafka source's option of that name;
- ``floorOffsets={"<partition>": offset}``: offsets below it are never read, also by a query
  whose checkpoint stands before it — the stream engine that ran in between wrote them
  (:mod:`headwater.stream.handover`): a micro-batch's planned range still starts where Spark's
  checkpoint stands, but reads from the floor on (so Spark's epochs stay contiguous);
- ``read`` runs on the executors: each opens the log and reads its range as Arrow
  (:meth:`headwater.log.base.EventLog.read`): no per-event Python. Each dead letter the log
  reports becomes ONE row with ``_error`` set, the raw ``_payload`` and null event columns,
  so the sink can dead-letter it (design.md: bad input never blocks and is never lost).

Schema (:func:`source_schema`; :data:`SCHEMA` for ``events``): the topic's canonical columns,
nullable (:data:`TOPICS`: :data:`headwater.events.EVENT_SCHEMA` for ``events``,
:data:`~headwater.events.BAD_ROW_SCHEMA` for ``bad_rows``), plus ``_partition`` (int), ``_offset`` (bigint: the row's log offset; for a dead letter the
first offset of the unit), ``_appended_ms`` (bigint: log append time, ms since epoch UTC),
``_count`` (int: offsets the dead unit covers; null for an event), ``_error`` (string) and
``_payload`` (binary).

Register with :func:`register` and read with
``spark.readStream.format("headwater_log").option("url", home.settings.log_url).option("topic", "events").load()``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import SupportsTriggerAvailableNow

from headwater.events import BAD_ROW_SCHEMA, BAD_ROWS_TOPIC, EVENT_SCHEMA, EVENTS_TOPIC
from headwater.errors import InvalidInputError
from headwater.log import EventLog, open_log

NAME = "headwater_log"

# The canonical schema of each topic's rows (headwater.events).
TOPICS = {EVENTS_TOPIC: EVENT_SCHEMA, BAD_ROWS_TOPIC: BAD_ROW_SCHEMA}
META = pa.schema(
    [
        pa.field("_partition", pa.int32()),
        pa.field("_offset", pa.int64()),
        pa.field("_appended_ms", pa.int64()),
        pa.field("_count", pa.int32()),
        pa.field("_error", pa.string()),
        pa.field("_payload", pa.binary()),
    ]
)


def row_schema(topic: str) -> pa.Schema:
    """The canonical schema of ``topic``'s rows (:data:`TOPICS`); :class:`InvalidInputError` for another topic."""
    try:
        return TOPICS[topic]
    except KeyError:
        raise InvalidInputError(f"topic {topic!r}: no canonical schema (known: {', '.join(TOPICS)})", field="topic") from None


def source_schema(topic: str) -> pa.Schema:
    """The rows the source yields for ``topic``: its canonical columns, nullable, then :data:`META`."""
    return pa.schema([f.with_nullable(True) for f in row_schema(topic)] + list(META))


SCHEMA = source_schema(EVENTS_TOPIC)

_SPARK_TYPES = {
    pa.string(): "STRING",
    pa.int32(): "INT",
    pa.int64(): "BIGINT",
    pa.binary(): "BINARY",
    pa.date32(): "DATE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP",
}


def ddl(schema: pa.Schema) -> str:
    """``schema`` as a Spark DDL string (``"`name` TYPE, …"``)."""
    return ", ".join(f"`{f.name}` {_SPARK_TYPES[f.type]}" for f in schema)


def _offsets_option(options, name: str) -> dict[str, int]:
    """Option ``name`` (JSON ``{"<partition>": offset}``, default empty) as ``{str: int}``."""
    try:
        return {str(p): int(o) for p, o in json.loads(options.get(name, "{}")).items()}
    except (ValueError, TypeError, AttributeError):
        raise InvalidInputError(f"option `{name}`: expected JSON {{\"<partition>\": offset}}", field=name) from None


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
    """``spark.readStream.format("headwater_log")``; options: ``url`` (the event log's URL,
    ``home.settings.log_url``; required), ``topic`` (default ``events``; it must exist),
    ``maxRecordsPerPartition`` (int), ``replayOffsets`` (directory of a headwater checkpoint's
    offsets files), ``startingOffsets`` and ``floorOffsets`` (JSON ``{"<partition>": offset}``;
    partitions not named: 0; module doc). The schema is the topic's (:func:`source_schema`). Raises :class:`InvalidInputError` naming a bad option,
    :class:`~headwater.errors.NotFoundError` for a missing topic."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return ddl(source_schema(self.options.get("topic", EVENTS_TOPIC)))

    def streamReader(self, schema) -> "LogStreamReader":
        if "url" not in self.options:
            raise InvalidInputError("option `url`: the event log URL (home.settings.log_url) is required", field="url")
        cap = self.options.get("maxRecordsPerPartition")
        if cap is not None and not (str(cap).isdigit() and int(cap) > 0):
            raise InvalidInputError(f"option `maxRecordsPerPartition`: must be a positive integer, got {cap!r}", field="maxRecordsPerPartition")
        topic = self.options.get("topic", EVENTS_TOPIC)
        row_schema(topic)  # InvalidInputError for a topic without a canonical schema
        log = open_log(self.options["url"])
        try:
            log.partitions(topic)  # NotFoundError for a wrong URL, before Spark plans anything
        finally:
            log.close()
        replay = self.options.get("replayOffsets")
        return LogStreamReader(
            url=self.options["url"],
            topic=topic,
            max_records_per_partition=int(cap) if cap is not None else None,
            plan=replay_plan(Path(replay), topic) if replay else None,
            starting=_offsets_option(self.options, "startingOffsets"),
            floor=_offsets_option(self.options, "floorOffsets"),
        )


class _Range(InputPartition):
    def __init__(self, url: str, topic: str, partition: int, start: int, end: int):
        super().__init__((partition, start, end))
        self.url, self.topic, self.partition, self.start, self.end = url, topic, partition, start, end


class LogStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Offsets and reads of one topic of the log (see the module docstring)."""

    def __init__(self, url: str, topic: str, max_records_per_partition: int | None, plan: dict[str, dict[str, int]] | None,
                 starting: dict[str, int] | None = None, floor: dict[str, int] | None = None):
        self.url, self.topic = url, topic
        self.cap = max_records_per_partition
        self.plan = plan
        self.starting = starting or {}
        self.floor = floor or {}
        self.target: dict[str, int] | None = None
        self._log: EventLog | None = None  # opened on first use, in the planner worker

    def _ends(self) -> dict[str, int]:
        if self._log is None:
            self._log = open_log(self.url)
        return {str(p): e for p, e in self._log.end_offsets(self.topic).items()}

    def stop(self) -> None:
        if self._log is not None:
            self._log.close()

    def initialOffset(self) -> dict:
        return {p: self.starting.get(p, 0) for p in self._ends()}

    def prepareForTriggerAvailableNow(self) -> None:
        self.target = self._ends()

    def latestOffset(self, start: dict, limit) -> dict:
        if self.plan is not None:
            return self.plan.get(_key(start), start)
        ends = self.target if self.target is not None else self._ends()
        out = {}
        for p, end in ends.items():
            s = int(start.get(p, 0))
            read_from = max(s, self.floor.get(p, 0))  # the batch bound counts what is read
            out[p] = max(s, min(end, read_from + self.cap) if self.cap else end)
        return out

    def reportLatestOffset(self) -> dict:
        return self._ends()

    def partitions(self, start: dict, end: dict) -> list[InputPartition]:
        ranges = ((int(p), max(int(start.get(p, 0)), self.floor.get(p, 0)), int(e)) for p, e in end.items())
        return [_Range(self.url, self.topic, p, s, e) for p, s, e in sorted(ranges) if e > s]

    def read(self, partition: _Range) -> Iterator[pa.RecordBatch]:
        yield from read_range(partition.url, partition.topic, partition.partition, partition.start, partition.end)


# Offsets read per log call: an executor holds one such slice at a time, however large the
# micro-batch planned for its partition (the log reports a dead unit in the slice holding
# its first offset, so slicing never repeats or drops one).
READ_SLICE = 50_000


def read_range(url: str, topic: str, partition: int, start: int, end: int) -> Iterator[pa.RecordBatch]:
    """Rows ``[start, end)`` of one partition of ``topic`` as record batches of
    :func:`source_schema`, each slice of :data:`READ_SLICE` offsets followed by one row per
    dead letter the log reports for it."""
    rows, schema = row_schema(topic), source_schema(topic)
    log = open_log(url)
    try:
        for lo in range(start, end, READ_SLICE):
            yield from _slice(*log.read(topic, partition, lo, min(lo + READ_SLICE, end), rows), rows, schema)
    finally:
        log.close()


def _slice(events: pa.Table, dead: list, rows: pa.Schema, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """One :meth:`EventLog.read` result (of ``rows``) as batches of ``schema``: its rows, then
    its dead letters (row columns null)."""
    if events.num_rows:
        n = events.num_rows
        cols = [events[f.name] for f in rows]
        cols += [events["_partition"], events["_offset"], events["_appended_ms"], pa.nulls(n, pa.int32()), pa.nulls(n, pa.string()), pa.nulls(n, pa.binary())]
        yield from pa.Table.from_arrays(cols, schema=schema).to_batches()
    if dead:
        rows = [
            {f.name: None for f in schema}
            | {"_partition": d.partition, "_offset": d.offset, "_appended_ms": d.appended_ms, "_count": d.count, "_error": d.error, "_payload": d.payload}
            for d in dead
        ]
        yield pa.RecordBatch.from_pylist(rows, schema=schema)


def register(spark) -> None:
    """Register :class:`LogDataSource` with ``spark`` (idempotent)."""
    spark.dataSource.register(LogDataSource)
