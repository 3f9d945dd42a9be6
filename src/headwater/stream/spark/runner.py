"""Run a :class:`~headwater.stream.pipeline.Pipeline` on Spark Structured Streaming (local or cluster).

The scale-out engine of design.md: the same declarative pipeline headwater's micro-batch
engine runs, translated to Spark's streaming operators, reading the event log through
:mod:`headwater.stream.spark.source` and writing Delta from the executors (:mod:`.sink`).

Translation (one streaming query per output, each with its own Spark checkpoint under
``home.checkpoint_dir("spark-<pipeline>-<output>")``):

- **bronze** (``bronze.events`` + ``bronze.dead_letter``): ``withWatermark(received_at,
  dedup.ttl).dropDuplicatesWithinWatermark(["source", dedup.key])`` — Spark's dedup with a state TTL
  measured on processing time (``received_at``), headwater's :class:`Dedup` semantics. Late
  events still reach bronze (no event-time watermark here).
- **bad_rows** (``bronze.bad_rows`` + ``bronze.dead_letter``): the ``bad_rows`` topic's rows
  (:data:`~headwater.events.BAD_ROW_SCHEMA`) as they are — no dedup, as headwater's engine
  writes them.
- **each aggregate** → ``realtime.<name>``: derived columns (``F.expr``),
  ``withWatermark(watermark.column, watermark.delay)``, ``dropDuplicatesWithinWatermark
  (["source", dedup.key])``, ``groupBy(window, *group_by)``:
  :class:`Tumbling` → ``window(ts, size)``; :class:`Hopping` → ``window(ts, size, slide)``;
  :class:`Session` → ``session_window(ts, gap)``. Measures: ``count`` → ``count(*)``,
  ``sum`` → ``sum(col)`` as double, ``distinct`` → ``hll_sketch_agg(col, lg_k)`` (Apache
  DataSketches HLL, the sketch headwater's engine keeps, hashing the same UTF-8 values) as
  ``<name>_sketch``, and ``<name>`` its float estimate, computed in the sink with the
  DataSketches Python binding (:func:`headwater.stream.sketches.estimates`) — Spark's
  ``hll_sketch_estimate`` rounds to an integer. Output mode as declared.

Where Spark's semantics differ from headwater's engine (see the parity tests,
``tests/stream/test_spark_parity.py``):

- Spark's watermark is ONE max over all partitions, without per-partition min or idleness.
- Spark decides lateness in batch N with the watermark batch N−1 ran with (SPARK-40925),
  i.e. ``max event time of batches 0..N−2 − delay``; it evicts (emits, in append mode)
  windows with ``window_end <= max event time of batches 0..N−1 − delay``, and at the end of
  an available-now run one extra no-data batch emits what the final watermark closed.
  With back-to-back batches (replay, available-now) this is deterministic; under a
  processing-time trigger Spark also runs a no-data batch whenever the watermark advanced
  and nothing new is pending, so which watermark decides then depends on timing.
  ``watermark.idle_timeout`` has no Spark counterpart and is ignored.
- Spark's dedup in the aggregate queries is bounded by the event-time watermark, not a
  processing-time TTL; retries carry the same event time, so no window count differs.
- ``allowed_lateness`` has no Spark equivalent: a non-zero value raises ``ValueError``; so
  does a session window in ``update`` mode (Spark supports session windows in append only).
- Spark has no late side output: late rows are dropped and only counted
  (``numRowsDroppedByWatermark``), so this runner writes no ``bronze.late_events``.

Running (``headwater stream`` with setting ``stream.engine = "spark"``): :meth:`SparkPipeline.run`
keeps the queries running on a processing-time trigger until a stop event, then stops them;
:meth:`~SparkPipeline.run_available_now` processes the log as it is and returns. After each
epoch of the bronze query (``events``) or the bad_rows query is in its tables, the driver
commits the consumer group :data:`~headwater.events.STREAM_GROUP`'s offsets of that topic to
the epoch's end, read from Spark's own offset log (``offsets/<epoch>``, written before the
epoch runs): as headwater's engine does after each batch, so ``headwater status``, the
collector's lag limit and Kafka's lag tools see Spark's progress, and the log's retention
may delete what it consumed. Spark's checkpoint stays the source of truth, as for Spark's
Kafka source.

Switching engines (``SparkConfig.start_at_group``, :mod:`headwater.stream.handover`): a query
without a checkpoint starts where the group stands. A query whose checkpoint stands behind the
group while the group's last committer is headwater's engine (it ran since Spark stopped)
gets a *floor* at the group's offsets, kept in its checkpoint directory
(:data:`FLOOR_FILE`): its micro-batches never read below it (the Python data source's
``floorOffsets``; a filter on Spark's Kafka connector), so nothing reaches the lake twice.
The driver records Spark as the group's committer before its first group commit. Where a
query's first epoch starts is kept in its checkpoint directory (:data:`START_FILE`): Spark
asks the source again when epoch 0 re-runs, and the group may have moved to its end by then.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.events import BAD_ROWS_TOPIC, EVENTS_TOPIC, STREAM_GROUP
from headwater.files import write_atomic
from headwater.lake.store import Lake
from headwater.log import EventLog, open_log
from headwater.stream import handover
from headwater.stream.pipeline import Aggregate, Hopping, Pipeline, Session, Tumbling
from headwater.stream.spark import sink
from headwater.stream.spark.source import NAME, register

log = logging.getLogger("headwater.stream.spark")

# A query's Python worker missed Spark's hard-coded 10 s connect-back (a loaded machine):
# restarting the query from its checkpoint is safe (see run_available_now).
_CONNECT_BACK = "Python worker failed to connect back"
# In a query's Spark checkpoint directory: offsets it never reads (module doc; JSON {"<partition>": offset}).
FLOOR_FILE = "headwater-floor.json"
# In a query's Spark checkpoint directory: where its first epoch starts (JSON {"<partition>": offset}).
START_FILE = "headwater-start.json"


def _interval(d: dt.timedelta) -> str:
    """A Spark interval string: whole milliseconds (Spark windows are µs-precise, ms is enough)."""
    return f"{round(d.total_seconds() * 1000)} milliseconds"


@dataclass(frozen=True)
class SparkConfig:
    """How the Spark queries cut and run micro-batches.

    ``max_records_per_partition``: batch bound per log partition (``None``: all available);
    ``replay_offsets``: a headwater checkpoint's ``offsets`` directory whose batches to replay
    (overrides the bound); ``available_now``: ``Trigger.AvailableNow`` (else a processing-time
    trigger every ``trigger_interval_s``); ``start_at_group``: a query without a checkpoint
    starts at the consumer group :data:`~headwater.events.STREAM_GROUP`'s committed offsets
    (as read when the :class:`SparkPipeline` is made), not at the log's start — where the
    engine this one takes over from stopped — and a query whose checkpoint is behind the
    group that headwater's engine committed since gets a floor there (module doc;
    ``headwater stream`` sets it)."""

    max_records_per_partition: int | None = None
    replay_offsets: Path | None = None
    available_now: bool = True
    trigger_interval_s: float = 0.5
    start_at_group: bool = False


def for_spark(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` with its session-window aggregates in append mode, the only output mode
    Spark supports for session windows (a live session then appears once it has closed)."""
    return replace(
        pipeline,
        aggregates=tuple(replace(a, output_mode="append") if isinstance(a.window, Session) else a for a in pipeline.aggregates),
    )


def check_supported(pipeline: Pipeline) -> None:
    """:class:`InvalidInputError` naming the first aggregate of ``pipeline`` Spark cannot run:
    ``allowed_lateness`` > 0, or a session window in update mode (see the module docstring).
    Needs no Spark session: callers check before starting a JVM."""
    for a in pipeline.aggregates:
        if a.allowed_lateness:
            raise InvalidInputError(f"aggregate {a.name}: allowed_lateness has no Spark Structured Streaming equivalent, got {a.allowed_lateness}",
                                    field=f"aggregates.{a.name}.allowed_lateness")
        if isinstance(a.window, Session) and a.output_mode != "append":
            raise InvalidInputError(f"aggregate {a.name}: Spark supports session windows only in append output mode, got {a.output_mode!r}",
                                    field=f"aggregates.{a.name}.output_mode")


def last_epoch(checkpoint: Path) -> int | None:
    """The newest epoch of a Spark query's offset log under ``checkpoint`` (``None``: none yet)."""
    offsets = checkpoint / "offsets"
    epochs = [int(p.name) for p in offsets.iterdir() if p.name.isdigit()] if offsets.is_dir() else []
    return max(epochs, default=None)


def epoch_offsets(checkpoint: Path, epoch_id: int, topic: str) -> dict[int, int]:
    """``{partition: end offset}`` of ``topic`` in epoch ``epoch_id`` of a one-source Spark
    query, from its offset log ``<checkpoint>/offsets/<epoch_id>``: a version line (``v1``),
    the batch metadata (JSON), then the source's offset as JSON (Spark's ``OffsetSeqLog``) —
    ``{"<partition>": offset}`` from headwater's data source, ``{"<topic>": {"<partition>":
    offset}}`` from Spark's Kafka connector."""
    lines = (checkpoint / "offsets" / str(epoch_id)).read_text().splitlines()
    offset = json.loads(lines[2])
    if isinstance(offset.get(topic), dict):
        offset = offset[topic]
    return {int(p): int(o) for p, o in offset.items()}


class SparkPipeline:
    """The Spark Structured Streaming queries of ``pipeline`` over ``home``'s event log
    (or the log at ``log_url``), writing ``home``'s tables and checkpoints. Creates the log's
    ``bad_rows`` topic (one partition) if it is missing, as headwater's engine does.

    :class:`InvalidInputError` for what Spark cannot run (:func:`check_supported`)."""

    def __init__(self, spark, home: Home, pipeline: Pipeline, config: SparkConfig | None = None, log_url: str | None = None):
        check_supported(pipeline)
        self.spark, self.home, self.pipeline = spark, home, pipeline
        self.lake = Lake.of(home)
        self.log_url = log_url or home.settings.log_url
        self.config = config or SparkConfig()
        self._log: EventLog | None = None  # the driver's handle for group commits, opened on first use
        # The events and bad_rows queries commit the group from two driver threads.
        self._group_lock = threading.Lock()
        self._recorded = False  # whether this driver recorded Spark as the group's committer
        self._group_log().ensure_topic(BAD_ROWS_TOPIC, 1)
        # Read once: the bronze query commits the group as it goes, and the aggregate
        # queries must start where bronze started, not where it has got to.
        self.starting: dict[str, dict[int, int]] = {}
        if self.config.start_at_group and self.config.replay_offsets is None:
            self.starting = {t: self._group_log().committed(STREAM_GROUP, t) for t in (EVENTS_TOPIC, BAD_ROWS_TOPIC)}
            if handover.last_committer(home) == handover.EMBEDDED:
                for output, topic in self.queries():
                    self._take_over(output, topic, self.starting[topic])
        self.floors = {output: self._read_floor(output) for output, _ in self.queries()}
        register(spark)

    def app_id(self, output: str) -> str:
        """Spark query name, checkpoint name and Delta txn app id of ``output``."""
        return f"spark-{self.pipeline.name}-{output}"

    def queries(self) -> list[tuple[str, str]]:
        """``(output, topic)`` of every query: ``bronze`` and each aggregate read ``events``,
        ``bad_rows`` reads ``bad_rows``."""
        return [("bronze", EVENTS_TOPIC), ("bad_rows", BAD_ROWS_TOPIC), *((a.name, EVENTS_TOPIC) for a in self.pipeline.aggregates)]

    # -- taking over from headwater's engine ---------------------------------------------
    def _floor_path(self, output: str) -> Path:
        return self.home.checkpoint_dir(self.app_id(output)) / FLOOR_FILE

    def _read_floor(self, output: str) -> dict[int, int]:
        path = self._floor_path(output)
        return {int(p): o for p, o in json.loads(path.read_text()).items()} if path.exists() else {}

    def _take_over(self, output: str, topic: str, group: dict[int, int]) -> None:
        """Give query ``output`` (of ``topic``) a floor at ``group`` where its checkpoint stands
        behind it: headwater's engine, the group's last committer, consumed that far since
        Spark stopped (module doc). A query without a checkpoint starts at the group anyway."""
        checkpoint = self.home.checkpoint_dir(self.app_id(output))
        epoch = last_epoch(checkpoint)
        if epoch is None:
            return
        own = epoch_offsets(checkpoint, epoch, topic)
        if not handover.ahead(group, own):
            return
        floor = self._read_floor(output)
        floor = {p: max(o, floor.get(p, 0)) for p, o in group.items()}
        write_atomic(self._floor_path(output), json.dumps({str(p): o for p, o in floor.items()}).encode())
        log.info("query %s takes over %s from the embedded engine at consumer group %s's offsets %s (its checkpoint stood at %s); %s",
                 self.app_id(output), topic, STREAM_GROUP, floor, own, handover.NOT_CARRIED)

    def _starting(self, output: str, topic: str) -> dict[int, int] | None:
        """Where query ``output``'s first epoch starts: the group's offsets read now, kept in
        its checkpoint (:data:`START_FILE`) once that epoch is planned. Spark asks the source
        for its initial offset again whenever epoch 0 re-runs (a stop after the epoch's sink
        and group commits but before Spark's ``commits/0``); by then the group stands at the
        epoch's end, and an epoch re-run from there would read nothing and rebuild an empty
        dedup state (Spark's Kafka source keeps its initial offsets in the checkpoint too)."""
        checkpoint = self.home.checkpoint_dir(self.app_id(output))
        path = checkpoint / START_FILE
        if last_epoch(checkpoint) is not None and path.exists():
            return {int(p): o for p, o in json.loads(path.read_text()).items()}
        starting = self.starting.get(topic)
        if starting is not None:  # {} too (a log without commits): the group may commit before epoch 0 does
            checkpoint.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({str(p): o for p, o in starting.items()}).encode())
        return starting

    # -- the source ------------------------------------------------------------------------
    def source(self, topic: str = EVENTS_TOPIC, output: str = "bronze"):
        """``topic`` of the log as a streaming DataFrame (schema
        :func:`headwater.stream.spark.source.source_schema`) for query ``output`` (its floor):
        a ``kafka://`` log through Spark's own Kafka connector where its jar is deployed
        (:mod:`.kafka_connector`; not for ``replay_offsets``), else headwater's Python data source."""
        starting, floor = self._starting(output, topic), self.floors.get(output)
        if self.log_url.startswith("kafka://") and self.config.replay_offsets is None:
            from headwater.stream.spark import kafka_connector

            if kafka_connector.available(self.spark):
                df = kafka_connector.source(self.spark, self.log_url, topic, self.config.max_records_per_partition, starting)
                return _above(df, floor) if floor else df
        reader = self.spark.readStream.format(NAME).option("url", self.log_url).option("topic", topic)
        if starting:
            reader = reader.option("startingOffsets", json.dumps({str(p): o for p, o in starting.items()}))
        if floor:
            reader = reader.option("floorOffsets", json.dumps({str(p): o for p, o in floor.items()}))
        if self.config.replay_offsets is not None:
            reader = reader.option("replayOffsets", str(self.config.replay_offsets))
        elif self.config.max_records_per_partition:
            reader = reader.option("maxRecordsPerPartition", str(self.config.max_records_per_partition))
        return reader.load()

    def events(self, output: str = "bronze"):
        """Decoded events only (for query ``output``), with the pipeline's derived columns."""
        from pyspark.sql import functions as F

        df = self.source(EVENTS_TOPIC, output).where(F.col("_error").isNull())
        for c in self.pipeline.columns:
            df = df.withColumn(c.name, F.expr(c.expr))
        return df

    # -- the queries' DataFrames ---------------------------------------------------------
    def bronze_frame(self):
        """Source rows deduplicated on (``source``, ``dedup.key``) within ``dedup.ttl`` of
        ``received_at`` (an id is unique per source only: one source's messageId must not drop
        another source's event). Dead-letter rows (no event columns) are keyed by their log position and have no
        time (null): they move no watermark, are never late and pass the dedup once each
        (the source emits each undecodable record once)."""
        from pyspark.sql import functions as F

        key = self.pipeline.dedup.key
        return (
            self.source()
            .withColumn("_dedup_key", F.coalesce(F.col(key), F.format_string("dead-letter/%d/%d", "_partition", "_offset")))
            .withColumn("_dedup_ts", F.col("received_at"))
            .withWatermark("_dedup_ts", _interval(self.pipeline.dedup.ttl))
            .dropDuplicatesWithinWatermark(["source", "_dedup_key"])
        )

    def aggregate_frame(self, agg: Aggregate):
        """The windowed aggregate: ``window_start``, ``window_end``, group_by, measures."""
        from pyspark.sql import functions as F

        wm = self.pipeline.watermark
        ts = F.col(wm.column)
        w = agg.window
        if isinstance(w, Tumbling):
            window = F.window(ts, _interval(w.size))
        elif isinstance(w, Hopping):
            window = F.window(ts, _interval(w.size), _interval(w.slide))
        elif isinstance(w, Session):
            window = F.session_window(ts, _interval(w.gap))
        else:  # pragma: no cover - Pipeline validates window types
            raise TypeError(f"aggregate {agg.name}: unknown window {w!r}")
        measures, finals = [], []
        for m in agg.measures:
            if m.kind == "count":
                measures.append(F.count(F.lit(1)).alias(m.name))
                finals.append(F.col(m.name))
            elif m.kind == "sum":
                measures.append(F.sum(F.col(m.column).cast("double")).alias(m.name))
                finals.append(F.col(m.name))
            else:
                sketch = f"{m.name}_sketch"
                measures.append(F.hll_sketch_agg(F.col(m.column), m.lg_k).alias(sketch))
                # The estimate is filled in by the sink from the sketch, as headwater computes it
                # (Spark's hll_sketch_estimate rounds to a whole number).
                finals += [F.lit(None).cast("double").alias(m.name), F.col(sketch)]
        grouped = (
            self.events(agg.name)
            .withWatermark(wm.column, _interval(wm.delay))
            .dropDuplicatesWithinWatermark(["source", self.pipeline.dedup.key])
            .groupBy(window.alias("_window"), *agg.group_by)
            .agg(*measures)
        )
        return grouped.select(
            F.col("_window.start").alias("window_start"), F.col("_window.end").alias("window_end"), *agg.group_by, *finals
        )

    # -- consumer group ------------------------------------------------------------------
    def _commit_group(self, output: str, topic: str, epoch_id: int) -> None:
        """Commit :data:`STREAM_GROUP`'s offsets of ``topic`` to epoch ``epoch_id``'s end of
        query ``output`` (called by its sink on the driver once the epoch is in bronze), never
        below the query's floor. Spark is recorded as the group's committer first
        (:mod:`headwater.stream.handover`). Through a handle with the log's retention, as
        headwater's engine: the committing process applies it."""
        ends = epoch_offsets(self.home.checkpoint_dir(self.app_id(output)), epoch_id, topic)
        floor = self.floors.get(output, {})
        with self._group_lock:
            if not self._recorded:
                handover.record(self.home, handover.SPARK)
                self._recorded = True
            self._group_log().commit(STREAM_GROUP, topic, {p: max(o, floor.get(p, 0)) for p, o in ends.items()})

    def _group_log(self) -> EventLog:
        if self._log is None:
            self._log = open_log(self.log_url, retention_ms=self.home.settings.log.retention_ms)
        return self._log

    def close(self) -> None:
        """Close the driver's log handle (reopened if a query commits again)."""
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- running -------------------------------------------------------------------------
    def outputs(self, bronze: bool = True) -> list[tuple[str, object, sink.BatchFn, str]]:
        """``(output, streaming DataFrame, foreachBatch function, output mode)`` per query:
        bronze and bad_rows (unless ``bronze=False``), then one per aggregate."""
        out = []
        if bronze:
            for output, topic, frame in (("bronze", EVENTS_TOPIC, self.bronze_frame()), ("bad_rows", BAD_ROWS_TOPIC, self.source(BAD_ROWS_TOPIC, "bad_rows"))):
                fn = sink.bronze_sink(self.lake, self.app_id(output), topic, committed=functools.partial(self._commit_group, output, topic))
                out.append((output, frame, fn, "append"))
        for agg in self.pipeline.aggregates:
            keys = ("window_start", *agg.group_by)
            distinct = [m.name for m in agg.measures if m.kind == "distinct"]
            fn = sink.window_sink(self.lake, agg.table, self.app_id(agg.name), agg.output_mode, keys, distinct)
            out.append((agg.name, self.aggregate_frame(agg), fn, agg.output_mode))
        return out

    def _start(self, output: str, frame, fn: sink.BatchFn, output_mode: str):
        writer = (
            frame.writeStream.queryName(self.app_id(output).replace("-", "_"))
            .outputMode(output_mode)
            .option("checkpointLocation", str(self.home.checkpoint_dir(self.app_id(output))))
            .foreachBatch(fn)
        )
        if self.config.available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{self.config.trigger_interval_s} seconds")
        query = writer.start()
        # Spark starts each query's Python source planner as a "simple worker" that must
        # connect back within a hard-coded 10 s (PythonWorkerFactory.createSimpleWorker);
        # several starting at once on a busy 2-core machine miss it. Start them one by one.
        while query.isActive and query.status["message"] == "Initializing sources":
            time.sleep(0.05)
        return query

    def start(self, bronze: bool = True) -> list:
        """Start every query (see :meth:`outputs`); return the ``StreamingQuery`` objects."""
        return [self._start(*o) for o in self.outputs(bronze)]

    def run_available_now(self, bronze: bool = True, restarts: int = 3) -> list:
        """Run every query with ``Trigger.AvailableNow`` to the end of the log, one after the
        other (on ``local[2]`` each batch already uses both cores), and return the finished
        queries (``recentProgress`` holds Spark's per-batch metrics).

        A query whose Python worker missed Spark's 10 s connect-back (a loaded machine) is
        restarted from its checkpoint, up to ``restarts`` times — as a supervisor would: the
        checkpoint and the idempotent sinks make the restart exactly-once. Any other failure,
        or the last one, is re-raised (``StreamingQueryException``)."""
        from pyspark.errors import StreamingQueryException

        if not self.config.available_now:
            raise InvalidInputError("run_available_now: the SparkConfig has available_now=False")
        done = []
        try:
            for output in self.outputs(bronze):
                for attempt in range(restarts + 1):
                    query = self._start(*output)
                    try:
                        query.awaitTermination()
                        break
                    except StreamingQueryException as e:
                        if not _restartable(output[0], e, attempt, restarts):
                            raise
                done.append(query)
        finally:
            self.close()
        return done

    def run(self, stop: threading.Event, bronze: bool = True, restarts: int = 3, poll_s: float = 0.5) -> None:
        """Run every query on the processing-time trigger (``config.trigger_interval_s``) until
        ``stop`` is set, then stop them all and return. A query that failed is restarted from
        its checkpoint when :func:`_restartable` (at most ``restarts`` times); any other
        failure stops the others and is raised (``StreamingQueryException``).

        Stopping interrupts a batch in progress; its epoch is re-run from Spark's offset log
        at the next start and the sinks' Delta txns keep it exactly once."""
        if self.config.available_now:
            raise InvalidInputError("run: the SparkConfig has available_now=True (use run_available_now)")
        outputs = self.outputs(bronze)
        queries: dict[str, object] = {}
        attempts: dict[str, int] = {}  # restarts so far per query
        try:
            for output in outputs:
                if stop.is_set():
                    return
                queries[output[0]] = self._start(*output)
            while not stop.wait(poll_s):
                for output in outputs:
                    name, query = output[0], queries[output[0]]
                    if query.isActive or (error := query.exception()) is None:
                        continue
                    if not _restartable(name, error, attempts.get(name, 0), restarts):
                        raise error
                    attempts[name] = attempts.get(name, 0) + 1
                    queries[name] = self._start(*output)
        finally:
            for query in queries.values():
                query.stop()
            self.close()


def _restartable(name: str, error: Exception, attempt: int, restarts: int) -> bool:
    """Whether query ``name``, failed with ``error`` on its ``attempt``-th restart (0: the
    first run), is restarted: only for a missed Python-worker connect-back, ``restarts``
    times at most (logged)."""
    if _CONNECT_BACK not in str(error) or attempt >= restarts:
        return False
    log.warning("query %s: %s; restarting from its checkpoint", name, error)
    return True


def _above(df, floor: dict[int, int]):
    """Rows of source DataFrame ``df`` at or above ``floor`` (``{partition: offset}``; a dead
    letter by its first offset)."""
    from pyspark.sql import functions as F

    below = [(F.col("_partition") == p) & (F.col("_offset") < o) for p, o in floor.items() if o > 0]
    return df.where(~functools.reduce(lambda a, b: a | b, below)) if below else df
