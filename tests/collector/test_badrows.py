"""Bad-row building blocks of the collector: the auth-failure rate limit, and listing an empty home."""

from __future__ import annotations

from headwater.collector.auth import AuthFailureLimiter
from headwater.collector.badrows import list_bad_rows
from headwater.config import Home


def test_auth_failures_are_rate_limited_per_minute_and_counted():
    limiter = AuthFailureLimiter(per_minute=3)
    assert [limiter.admit(60.0 + i) for i in range(5)] == [True, True, True, False, False]
    assert limiter.take_suppressed() == 2 and limiter.suppressed == 0
    assert limiter.admit(120.0)  # a new minute


def test_an_empty_home_lists_nothing(tmp_path):
    assert list_bad_rows(Home(tmp_path)).num_rows == 0
