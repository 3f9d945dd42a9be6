"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    """One real local[2] SparkSession for the whole test run (JVM start costs ~10 s)."""
    from headwater.spark import session

    s = session("headwater-tests")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (``tests.postgres.PostgresServer``: ``.dsn(db)``,
    ``.create_database(name)``) for the whole run, ``wal_level=logical``. Skips, saying why,
    only where no server can be started (no binaries and no apt)."""
    from tests.postgres import PostgresUnavailable, start_postgres

    try:
        server = start_postgres()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server (``tests.s3.S3Server``: moto's standalone server) for the
    whole run: ``.create_bucket()``, ``.storage_options()``, ``.env()``."""
    from tests.s3 import start_s3

    server = start_s3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka():
    """A real Kafka-protocol broker (``tests.kafka.KafkaBroker``: Tansu, memory storage) for
    the whole run: ``.bootstrap``, ``.url(**options)`` (a ``kafka://`` log URL)."""
    from tests.kafka import start_kafka

    broker = start_kafka()
    yield broker
    broker.stop()


@pytest.fixture
def broker():
    """A broker of this test's own (as ``kafka``): for tests using fixed topic and group names
    (the collector's and the stream's), or stopping it."""
    from tests.kafka import start_kafka

    b = start_kafka()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def spark_cluster():
    """A Spark standalone cluster (``tests.spark_cluster.SparkCluster``): a master and two
    workers (1 core each) as separate JVM processes for the whole run. Drive an application
    on it with ``.drive("module:function", **kwargs)`` (a driver process of its own)."""
    from tests.spark_cluster import start_cluster

    cluster = start_cluster(workers=2)
    yield cluster
    cluster.stop()
