"""Spark's own Kafka connector as the source of a ``kafka://`` log, when its jar is deployed.

Spark reads Kafka with the ``spark-sql-kafka-0-10`` connector (class
:data:`PROVIDER`; https://spark.apache.org/docs/latest/streaming/structured-streaming-kafka-integration.html),
deployed with ``--packages org.apache.spark:spark-sql-kafka-0-10_2.13:<spark version>``
(docs/kafka.md). When that class is on the JVM classpath, :func:`source` reads the topic with
``spark.readStream.format("kafka")`` — offsets in Spark's checkpoint, each partition's range
read on the executors — and :func:`decode` turns the connector's rows (``key``, ``value``,
``topic``, ``partition``, ``offset``, ``timestamp``, ``timestampType``, ``headers``) into
the topic's :func:`headwater.stream.spark.source.source_schema` with Spark SQL functions:
``from_json`` of the value against the topic's canonical schema (:mod:`headwater.log.kafka.codec`). Otherwise the runner reads
through headwater's Python data source (:mod:`.source`), which does the same through
:class:`~headwater.log.kafka.KafkaLog` on the executors.

Differences from the Python data source, both documented in docs/kafka.md: the connector's
batch bound is ``maxOffsetsPerTrigger`` (a total over the partitions: the runner passes the
per-partition cap × partitions), it cannot replay a headwater checkpoint's batches
(``replay_offsets`` uses the Python source), and ``from_json`` (PERMISSIVE) reads a member of
the wrong JSON type as null instead of dead-lettering the message — a message is a dead letter
here when it has no value, an unknown ``headwater-schema-version``, is not a JSON object, or
lacks a required column.
"""

from __future__ import annotations

import json
import urllib.parse

from headwater.events import EVENTS_TOPIC
from headwater.log import open_log
from headwater.log.kafka.codec import SCHEMA_VERSION, VERSION_HEADER
from headwater.stream.spark.source import ddl, row_schema, source_schema

PROVIDER = "org.apache.spark.sql.kafka010.KafkaSourceProvider"


def available(spark) -> bool:
    """Whether Spark's Kafka connector (:data:`PROVIDER`) is on the driver JVM's classpath
    (``False`` where there is no JVM gateway, e.g. Spark Connect)."""
    try:
        jvm = spark.sparkContext._jvm
        jvm.java.lang.Class.forName(PROVIDER, False, jvm.java.lang.Thread.currentThread().getContextClassLoader())
        return True
    except Exception:  # py4j raises its own error for ClassNotFoundException
        return False


def options(url: str, topic: str, starting: dict[int, int] | None = None) -> dict[str, str]:
    """The connector's options for ``topic`` of the ``kafka://`` log at ``url``: bootstrap
    servers, the URL's client properties as ``kafka.<property>`` (security settings), headers
    included, read_committed, from the earliest offset or ``starting`` (``{partition:
    offset}``; 0 as the earliest, -2 in the connector's JSON) for a query without a checkpoint
    (the checkpoint then rules)."""
    parts = urllib.parse.urlsplit(url)
    out = {
        "kafka.bootstrap.servers": parts.netloc.rpartition("@")[2],
        "subscribe": topic,
        "startingOffsets": json.dumps({topic: {str(p): o or -2 for p, o in starting.items()}}) if starting and any(starting.values()) else "earliest",
        "includeHeaders": "true",
        "kafka.isolation.level": "read_committed",
    }
    out |= {f"kafka.{k}": v for k, v in urllib.parse.parse_qsl(parts.query) if "." in k}
    return out


def source(spark, url: str, topic: str, max_records_per_partition: int | None = None, starting: dict[int, int] | None = None):
    """``topic`` as a streaming DataFrame of its :func:`source_schema` through the connector,
    from ``starting`` (see :func:`options`); the batch bound is ``max_records_per_partition`` ×
    the topic's partitions (``maxOffsetsPerTrigger``)."""
    reader = spark.readStream.format("kafka").options(**options(url, topic, starting))
    if max_records_per_partition:
        log = open_log(url)
        try:
            total = max_records_per_partition * log.partitions(topic)
        finally:
            log.close()
        reader = reader.option("maxOffsetsPerTrigger", str(total))
    return decode(reader.load(), topic)


def decode(df, topic: str = EVENTS_TOPIC):
    """The connector's rows of ``topic`` as its :func:`source_schema`: the rows of good
    messages; one dead-letter row (row columns null, ``_count`` 1, ``_error``, ``_payload`` =
    the value) per bad one (module doc). Works on a batch or a streaming DataFrame."""
    from pyspark.sql import functions as F

    rows = row_schema(topic)
    # from_json reads every canonical column as nullable; the required ones are checked
    # after, so that a missing one dead-letters the message.
    required = [f.name for f in rows if not f.nullable]
    version = F.try_element_at(F.filter("headers", lambda h: h["key"] == VERSION_HEADER), F.lit(1))["value"].cast("string")
    parsed = F.from_json(F.col("value").cast("string"), ddl(rows), {"mode": "PERMISSIVE"})
    df = df.withColumn("_event", parsed).withColumn("_version", version)
    missing = [F.when(F.col(f"_event.{c}").isNull(), F.lit(c)) for c in required]
    error = (
        F.when(F.col("value").isNull(), F.lit("no value (a tombstone)"))
        .when(F.col("_version").isNotNull() & (F.col("_version") != SCHEMA_VERSION.decode()),
              F.concat(F.lit(f"unsupported {VERSION_HEADER} "), F.col("_version")))
        .when(F.col("_event").isNull(), F.lit("not a JSON object"))
        .when(F.concat_ws(",", *missing) != "", F.concat(F.lit("null or missing required column(s) "), F.concat_ws(",", *missing)))
    )
    df = df.withColumn("_error", error)
    good = F.col("_error").isNull()
    columns = [F.when(good, F.col(f"_event.{f.name}")).alias(f.name) for f in rows]
    return df.select(
        *columns,
        F.col("partition").cast("int").alias("_partition"),
        F.col("offset").alias("_offset"),
        F.unix_millis(F.col("timestamp")).alias("_appended_ms"),
        F.when(~good, F.lit(1)).cast("int").alias("_count"),
        F.col("_error"),
        F.when(~good, F.coalesce(F.col("value"), F.lit(b""))).alias("_payload"),
    ).select(*source_schema(topic).names)
