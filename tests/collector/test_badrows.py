"""Bad-row building blocks: the auth-failure rate limit and the replay tokenizer."""

from __future__ import annotations

from headwater.collector.app import AuthFailureLimiter
from headwater.collector.badrows import ReplayTokenizer, list_bad_rows
from headwater.collector.tokens import Tokenizer
from headwater.config import Home
from headwater.events import BAD_ROW_SCHEMA, BAD_ROW_TYPES

from .conftest import HMAC_KEY


def test_auth_failures_are_rate_limited_per_minute_and_counted():
    limiter = AuthFailureLimiter(per_minute=3)
    assert [limiter.admit(60.0 + i) for i in range(5)] == [True, True, True, False, False]
    assert limiter.suppressed == 2
    assert limiter.admit(120.0)  # a new minute


def test_replay_tokenizer_keeps_tokens_and_tokenises_raw_ids():
    t, r = Tokenizer(HMAC_KEY), ReplayTokenizer(HMAC_KEY)
    assert r(t("ann@example.com")) == t("ann@example.com")  # already a token: kept
    assert r.token("ann@example.com") == t("ann@example.com")  # raw: tokenised as usual


def test_taxonomy_and_an_empty_home_lists_nothing(tmp_path):
    assert BAD_ROW_TYPES == ("size_violation", "decode_failure", "envelope_violation", "schema_violation", "auth_failure")
    assert "protocol" in BAD_ROW_SCHEMA.names
    assert list_bad_rows(Home(tmp_path)).num_rows == 0
