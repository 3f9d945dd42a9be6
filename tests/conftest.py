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
