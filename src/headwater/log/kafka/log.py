"""The event log on Kafka (or any Kafka-protocol broker), with confluent-kafka (librdkafka).

URL: ``kafka://host:port[,host:port…]/?option=value&…`` — the bootstrap servers, then query
parameters (keywords of :func:`headwater.log.open_log` win over them):

- ``transactional`` (bool, default ``true``): each :meth:`~KafkaLog.append` is one producer
  transaction (module doc: guarantees); ``false`` for a broker without transactions;
- ``transactional_id`` (str; default ``headwater-<random>``): the producer's ``transactional.id``,
  stable across restarts of one appending process (:func:`~headwater.log.open_log`'s
  ``appender`` sets it) and unique among those appending at once;
- ``replication_factor`` (int; default: the broker's ``default.replication.factor``) and
  ``retention_ms`` (int; default: the broker's ``retention.ms``) of the topics this log creates;
- ``timeout_s`` (float, default 30): deadline of one broker round trip (metadata, offsets,
  a delivery, a commit); past it the call raises :class:`TransientError`;
- any name with a dot is a librdkafka client property, passed to every client (security:
  ``security.protocol``, ``sasl.mechanisms``, ``sasl.username``, ``sasl.password``,
  ``ssl.ca.location``, …; https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md),
  except those the guarantees rest on (:data:`_OWNED`). The setting ``log.kafka`` holds them
  out of the URL (masked by ``headwater config``); the URL is never logged.

Messages: one per event, value and headers per :mod:`.codec`, key = the identity key
(``user_id``, else ``anonymous_id``: the key the collector partitions by), produced to the
partition the :class:`~headwater.log.base.Append` names, so the embedded and the Kafka log
partition identically; timestamp = the append's time (``_appended_ms`` on read).

Guarantees. The producer is idempotent with ``acks=all`` (no duplicates or reordering from its
retries; a message is acknowledged once every in-sync replica has it).

- ``transactional=true``: an append is ONE transaction over every topic and partition it
  names (:attr:`atomic_multi_topic_append`), committed before :meth:`append` returns; if it
  raises, the transaction was aborted (or its producer discarded, which the next one with the
  same ``transactional.id`` fences and aborts). Readers use ``isolation.level=read_committed``,
  so on Kafka a request's events and bad rows become visible together or never (KIP-98).
  A killed process's open transaction holds back read_committed readers of its partitions
  until a producer with the same ``transactional_id`` starts (it fences the old one and aborts
  the transaction) or the broker aborts it after ``transaction.timeout.ms`` (librdkafka default
  60 s; a client property). Tansu 0.6 never times transactions out: there only the fencing
  restart frees the partitions, which is why the collector appends under a stable id.
- ``transactional=false``: every message of an append is acknowledged before it returns, but
  a failed append may have stored some of its messages (per partition, a prefix in order).
  Readers use ``isolation.level=read_uncommitted``: no transaction to wait for.
- A delivery the broker answers DUPLICATE_SEQUENCE_NUMBER (it says it stored the batch
  before) has no offset, and librdkafka reports it delivered; the append counts it as failed,
  since a broker may have lost that batch (Tansu 0.6 on S3 does, killed between recording the
  producer's sequence and writing the batch).
- Tansu (the test broker) shows aborted transactions to read_committed readers, so there an
  append that raised may leave its messages visible — as with ``transactional=false``. Either
  way, what :meth:`append` acknowledged is stored exactly once and in order; a client's retry
  of a failed request may store its events twice, and the stream deduplicates them by id.
  Tansu 0.6 on S3 storage also loses transaction state in a restart: seen here, read_committed
  fetches then returned nothing (no end of partition either) while read_uncommitted read on,
  and a producer with the collector's id could not start — run it with ``transactional=false``.

Reading: :meth:`read` assigns the partition at ``start`` and consumes until the position
reaches ``end`` (offsets are not dense: transaction markers take offsets too), or the
partition's end if the log holds less. :meth:`end_offsets` is the read_committed end
(last stable offset) as a fetch reports it: ListOffsets gives where to look, and a fetch from
there reports the end (Tansu 0.6's ListOffsets answers the last record batch's base offset
+ 1; on Kafka the fetch returns no data and confirms it). :meth:`commit` commits a consumer
group's offsets (``__consumer_offsets``), so lag tools see them.

Clients are created on first use; consumers are per thread (librdkafka consumers are not
meant to be shared), the producer and admin client per handle.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import urllib.parse
import uuid
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Consumer, IsolationLevel, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from headwater.errors import InvalidInputError, NotFoundError, TransientError
from headwater.log.base import Append, DeadLetter, EventLog, ReadResult, read_schema
from headwater.log.kafka import codec

log = logging.getLogger("headwater.log")

_OPTIONS = {"transactional": lambda v: _bool(v), "transactional_id": str, "replication_factor": int, "retention_ms": int, "timeout_s": float}
# Client properties the guarantees (module doc) rest on: a URL or setting cannot change them.
_OWNED = {"bootstrap.servers", "enable.idempotence", "acks", "request.required.acks", "transactional.id", "isolation.level",
          "enable.auto.commit", "enable.auto.offset.store", "group.id", "enable.partition.eof"}
# Identity key of an event: the first non-null of these (headwater.ingest.partitioning's rule).
KEY_COLUMNS = ("user_id", "anonymous_id")
READ_BATCH = 10_000  # messages per consume() call
_READER_GROUP = "headwater-reader"  # librdkafka wants a group.id; range reads never join or commit it


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(value)


def _transient(what: str, e: BaseException) -> TransientError:
    """``e`` (a librdkafka error) as the contract's failing store."""
    return TransientError(f"kafka event log: {what}: {e}", field="log.url", retry_after_s=1.0)


class KafkaLog(EventLog):
    """:class:`EventLog` on a Kafka-protocol broker (module doc)."""

    atomic_multi_topic_append = True  # per handle: False when not transactional

    @classmethod
    def from_url(cls, url: str, **options) -> KafkaLog:
        parts = urllib.parse.urlsplit(url)
        servers = parts.netloc.rpartition("@")[2]
        if parts.scheme != "kafka" or not servers or parts.path.strip("/") or parts.fragment:
            raise InvalidInputError("log.url: expected kafka://host:port[,host:port…]/?options", field="log.url")
        given: dict = {}
        client: dict[str, str] = {}
        for name, value in [*urllib.parse.parse_qsl(parts.query, keep_blank_values=True), *options.items()]:
            if "." in name:
                if name in _OWNED:
                    raise InvalidInputError(f"log.url: kafka client property {name} is set by headwater and cannot be changed", field="log.url")
                client[name] = str(value)
            elif name in _OPTIONS:
                if value is None:
                    continue
                try:
                    given[name] = _OPTIONS[name](value)
                except ValueError:
                    # The value is not echoed: a URL may carry secrets.
                    raise InvalidInputError(f"log.url: kafka option {name} has an invalid value", field="log.url") from None
            else:
                raise InvalidInputError(f"log.url: unknown kafka option {name!r} (known: {', '.join(_OPTIONS)}, or a dotted client property)",
                                        field="log.url")
        return cls(servers, client, **given)

    def __init__(self, servers: str, client: dict[str, str] | None = None, *, transactional: bool = True,
                 transactional_id: str | None = None, replication_factor: int | None = None, retention_ms: int | None = None, timeout_s: float = 30.0):
        self.timeout_s = timeout_s
        self.replication_factor, self.retention_ms = replication_factor, retention_ms
        self.transactional = transactional
        self.atomic_multi_topic_append = transactional
        # Without transactions there is nothing to wait for: read_uncommitted, which also
        # reads a broker whose transaction state is unreliable (module doc: Tansu on S3).
        self._isolation = "read_committed" if transactional else "read_uncommitted"
        self._client = {"bootstrap.servers": servers, **(client or {})}
        self._lock = threading.Lock()  # producer and admin creation; one transaction at a time
        self._local = threading.local()
        self._admin: AdminClient | None = None
        self._producer: Producer | None = None
        self._consumers: list[Consumer] = []  # of every thread, closed by close()
        self._txn_id = transactional_id or f"headwater-{uuid.uuid4().hex}"
        self._partitions: dict[str, int] = {}

    # -- clients ------------------------------------------------------------------------------
    def _admin_client(self) -> AdminClient:
        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(dict(self._client))
            return self._admin

    def _new_producer(self) -> Producer:
        # Every delivery calls back: a success without an offset is a failure (:func:`_produce`).
        conf = {"linger.ms": 5, "message.timeout.ms": int(self.timeout_s * 1000),
                **self._client, "enable.idempotence": True, "acks": "all"}
        if self.transactional:
            conf["transactional.id"] = self._txn_id
        producer = Producer(conf)
        if self.transactional:
            producer.init_transactions(self.timeout_s)  # fences an earlier producer with this id
        return producer

    def _consumer(self, group: str = _READER_GROUP) -> Consumer:
        """This thread's consumer of ``group`` (reads: the reader group, never committed)."""
        consumers = self._local.__dict__.setdefault("consumers", {})
        if group not in consumers:
            consumers[group] = consumer = Consumer({
                "session.timeout.ms": 6000, "fetch.wait.max.ms": 20, "max.partition.fetch.bytes": 8 << 20,
                **self._client, "group.id": group, "enable.auto.commit": False, "enable.auto.offset.store": False,
                "isolation.level": self._isolation, "enable.partition.eof": True, "auto.offset.reset": "earliest",
            })
            with self._lock:
                self._consumers.append(consumer)
        return consumers[group]

    def close(self) -> None:
        """Close every thread's consumers and flush the producer; the handle may be used again."""
        self._local = threading.local()
        with self._lock:
            for consumer in self._consumers:
                with contextlib.suppress(Exception):
                    consumer.close()
            self._consumers = []
            if self._producer is not None:
                self._producer.flush(self.timeout_s)
                self._producer = None
            self._admin = None

    # -- topics ---------------------------------------------------------------------------------
    def ensure_topic(self, topic: str, partitions: int) -> int:
        config = {"retention.ms": str(self.retention_ms)} if self.retention_ms is not None else {}
        new = NewTopic(topic, num_partitions=partitions, replication_factor=self.replication_factor or -1, config=config)
        try:
            self._admin_client().create_topics([new], operation_timeout=self.timeout_s, request_timeout=self.timeout_s)[topic].result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise _transient(f"creating topic {topic}", e) from e
        return self._count(topic, refresh=True)

    def partitions(self, topic: str) -> int:
        return self._count(topic)

    def _count(self, topic: str, refresh: bool = False) -> int:
        if refresh or topic not in self._partitions:
            # Metadata of all topics: asking for one by name makes some brokers (Tansu)
            # create it, and an unknown topic must stay unknown.
            try:
                topics = self._admin_client().list_topics(timeout=self.timeout_s).topics
            except KafkaException as e:
                raise _transient("reading metadata", e) from e
            if topic not in topics or topics[topic].error is not None or not topics[topic].partitions:
                raise NotFoundError(f"topic {topic!r} does not exist", field="topic")
            self._partitions[topic] = len(topics[topic].partitions)
        return self._partitions[topic]

    def _check(self, topic: str, partition: int) -> None:
        """:class:`NotFoundError` unless ``topic`` has ``partition`` (the count is cached; a
        partition past it refreshes it: topics may grow)."""
        if partition < 0 or (partition >= self._count(topic) and partition >= self._count(topic, refresh=True)):
            raise NotFoundError(f"topic {topic!r} has no partition {partition}", field="partition")

    # -- append ---------------------------------------------------------------------------------
    def _append(self, appends: Sequence[Append]) -> None:
        appends = [a for a in appends if a.events.num_rows]
        for a in appends:
            self._check(a.topic, a.partition)
        if not appends:
            return
        now = int(time.time() * 1000)
        # Encoded before the producer is taken: the lock is held only while producing.
        batches = [(a.topic, a.partition, codec.encode(a.events), _keys(a.events)) for a in appends]
        with self._lock:
            producer = self._producer = self._producer or self._open_producer()
            failed: list[KafkaError] = []
            try:
                if self.transactional:
                    producer.begin_transaction()
                for topic, partition, values, keys in batches:
                    _produce(producer, topic, partition, values, keys, now, failed)
                # Every delivery reported before the commit: a failed one aborts the transaction.
                if producer.flush(self.timeout_s):
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "messages not acknowledged in time"))
                if failed:
                    raise KafkaException(failed[0])
                if self.transactional:
                    producer.commit_transaction(self.timeout_s)
            except (KafkaException, BufferError) as e:
                self._abandon(producer, e)
                raise _transient(f"append of {sum(len(b[2]) for b in batches)} events not acknowledged", e) from e

    def _open_producer(self) -> Producer:
        try:
            return self._new_producer()
        except KafkaException as e:
            raise _transient("starting the producer", e) from e

    def _abandon(self, producer: Producer, error: BaseException) -> None:
        """After a failed append: abort its transaction, or drop the producer when that is not
        possible (a fatal error, the abort failing); the next append starts a new producer,
        whose ``init_transactions`` fences this one and aborts what it left open. A
        non-transactional producer is dropped too, so no message of the failed append is
        still retried behind the next one."""
        kafka_error = error.args[0] if isinstance(error, KafkaException) and error.args else None
        # A delivery without an offset (_produce) leaves a healthy transaction, and the broker
        # just answered: abort it now, or it holds back read_committed readers until the next
        # append's producer fences it (Tansu never times transactions out).
        abortable = isinstance(kafka_error, KafkaError) and (
            kafka_error.txn_requires_abort() or kafka_error.code() == KafkaError.DUPLICATE_SEQUENCE_NUMBER)
        if self.transactional and abortable:
            try:
                producer.abort_transaction(self.timeout_s)
                return
            except KafkaException as e:
                log.warning("kafka event log: aborting a transaction failed, starting a new producer: %s", e.args[0])
        with contextlib.suppress(Exception):
            producer.purge()
            producer.flush(0)
        self._producer = None

    # -- read -----------------------------------------------------------------------------------
    def read(self, topic: str, partition: int, start: int, end: int, schema: pa.Schema) -> ReadResult:
        self._check(topic, partition)
        if end <= start:
            return ReadResult(read_schema(schema).empty_table(), [])
        kept: list = []  # the messages in [start, end), in offset order
        consumer = self._consumer()
        consumer.assign([TopicPartition(topic, partition, start)])
        try:
            position, deadline = start, time.monotonic() + self.timeout_s
            while position < end:
                # At most the offsets left: consume() returns once it has that many messages
                # (the events after the range or the end-of-partition event fill a short count).
                # A range ending in a transaction marker at the partition's end is never
                # filled: consume() would wait out its whole timeout (0.5 s per read, measured),
                # so wait briefly and ask the position below.
                msgs = consumer.consume(min(READ_BATCH, end - position), timeout=0.01)
                errors = [m for m in msgs if m.error() is not None]
                for m in errors:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise _transient(f"reading {topic}/{partition}", KafkaException(m.error()))
                    # At the partition's end: the log may hold less than planned.
                    position = max(position, m.offset())
                    end = min(end, position)
                if errors:
                    msgs = [m for m in msgs if m.error() is None]
                if msgs:
                    position = max(position, msgs[-1].offset() + 1)
                    if msgs[0].offset() < start or msgs[-1].offset() >= end:
                        msgs = [m for m in msgs if start <= m.offset() < end]
                    kept += msgs
                    deadline = time.monotonic() + self.timeout_s
                elif position < end:
                    # Transaction markers take offsets but yield no message: ask where we are.
                    position = max(position, consumer.position([TopicPartition(topic, partition)])[0].offset)
                    if position < end and time.monotonic() > deadline:
                        raise TransientError(f"kafka event log: {topic}/{partition}: no progress at offset {position} for {self.timeout_s} s",
                                             field="log.url", retry_after_s=1.0)
        finally:
            consumer.unassign()
        offsets = [m.offset() for m in kept]
        stamps = [m.timestamp()[1] for m in kept]
        values = [m.value() for m in kept]
        versions = [codec.SCHEMA_VERSION if (h := m.headers()) == codec.HEADERS else _header(h) for m in kept]
        return _result(topic, partition, schema, offsets, stamps, values, versions)

    def end_offsets(self, topic: str) -> dict[int, int]:
        count = self._count(topic)
        parts = [TopicPartition(topic, p) for p in range(count)]
        try:
            listed = self._admin_client().list_offsets({tp: OffsetSpec.latest() for tp in parts}, request_timeout=self.timeout_s,
                                                       isolation_level=IsolationLevel[self._isolation.upper()])
            where = {tp.partition: f.result().offset for tp, f in listed.items()}
        except KafkaException as e:
            raise _transient(f"listing the offsets of {topic}", e) from e
        # A fetch from there reports the end (module doc): one EOF per partition.
        consumer = self._consumer()
        consumer.assign([TopicPartition(topic, p, max(o, 0)) for p, o in where.items()])
        ends: dict[int, int] = {}
        try:
            deadline = time.monotonic() + self.timeout_s
            while len(ends) < count:
                if time.monotonic() > deadline:
                    raise TransientError(f"kafka event log: no end offsets of {topic} within {self.timeout_s} s", field="log.url", retry_after_s=1.0)
                for m in consumer.consume(READ_BATCH, timeout=0.02):  # consume() waits out its timeout for a short batch
                    error = m.error()
                    if error is not None and error.code() == KafkaError._PARTITION_EOF:
                        ends[m.partition()] = m.offset()
                    elif error is not None:
                        raise _transient(f"reading the end of {topic}", KafkaException(error))
        finally:
            consumer.unassign()
        return dict(sorted(ends.items()))

    # -- consumer groups --------------------------------------------------------------------------
    def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        if not offsets:
            return
        try:
            self._consumer(group).commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
        except KafkaException as e:
            raise _transient(f"committing group offsets of {topic}", e) from e

    def committed(self, group: str, topic: str) -> dict[int, int]:
        parts = [TopicPartition(topic, p) for p in range(self._count(topic))]
        try:
            got = self._consumer(group).committed(parts, timeout=self.timeout_s)
        except KafkaException as e:
            raise _transient(f"reading group offsets of {topic}", e) from e
        return {tp.partition: max(tp.offset, 0) for tp in got}  # OFFSET_INVALID (-1001): nothing committed


def _keys(events: pa.Table) -> list[bytes | None]:
    """Message keys of ``events``: the identity key (:data:`KEY_COLUMNS`), else none."""
    columns = [events[c] for c in KEY_COLUMNS if c in events.column_names]
    if not columns:
        return [None] * events.num_rows
    key = pc.coalesce(*columns) if len(columns) > 1 else columns[0]
    return [k.encode() if k is not None else None for k in key.to_pylist()]


def _produce(producer: Producer, topic: str, partition: int, values: list[bytes], keys: list[bytes | None],
             timestamp: int, failed: list[KafkaError]) -> None:
    """Queue the messages of one append to ``topic``/``partition``; delivery errors go to
    ``failed``, and so does a delivery without an offset."""

    def report(err, msg):
        if err is not None:
            failed.append(err)
        elif msg.offset() is None:
            # librdkafka counts a DUPLICATE_SEQUENCE_NUMBER answer to a retried batch as
            # delivered, without an offset (rdkafka_request.c; confluentinc/librdkafka#4438):
            # the broker says it stored the batch before. Tansu 0.6 on S3 records the sequence
            # before it writes the batch (tansu-storage dynostore.rs, produce), so a broker
            # killed in between answers that for a batch it lost. Not acknowledged, then: the
            # append fails, its client retries, and the stream drops what was stored twice.
            failed.append(KafkaError(KafkaError.DUPLICATE_SEQUENCE_NUMBER, f"{topic}/{partition}: delivered without an offset"))

    for value, key in zip(values, keys):
        while True:
            try:
                producer.produce(topic, value, key, partition=partition, on_delivery=report, timestamp=timestamp, headers=codec.HEADERS)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
    producer.poll(0)


def _header(headers) -> bytes | None:
    """The :data:`codec.VERSION_HEADER` value of a message's headers, ``None`` if absent."""
    if headers:
        for name, value in headers:
            if name == codec.VERSION_HEADER:
                return value if value is not None else b""
    return None


def _result(topic: str, partition: int, schema: pa.Schema, offsets: list[int], stamps: list[int],
            values: list, versions: list) -> ReadResult:
    """The decoded messages of one read: events with :data:`READ_COLUMNS`, and dead letters
    (one per undecodable message, ``count`` 1)."""
    events, good, bad = codec.decode(values, versions, schema)
    dead = [DeadLetter(topic, partition, offsets[i], 1, error, values[i] or b"", stamps[i]) for i, error in bad]
    idx = np.asarray(good, dtype=np.int64)
    columns = [*events.columns, pa.array(np.full(len(idx), partition, np.int32)),
               pa.array(np.asarray(offsets, np.int64)[idx] if len(idx) else np.zeros(0, np.int64)),
               pa.array(np.asarray(stamps, np.int64)[idx] if len(idx) else np.zeros(0, np.int64))]
    return ReadResult(pa.Table.from_arrays(columns, schema=read_schema(schema)), dead)
