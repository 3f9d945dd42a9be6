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
