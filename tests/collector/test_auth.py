"""Access at the collector: keys looked up by digest, per-key rate limits and the per-address
limit on failed authentications (429 with Retry-After, the limit named), nothing accepted lost."""

from __future__ import annotations

import time

import httpx
import pytest

from headwater.collector import auth
from headwater.collector.auth import MovingWindow, RateLimited, RateLimits, WriteKeys
from headwater.config import Home
from tests.helpers import LogTail, start_collector

from .conftest import basic

KEY = "wk-auth-test-key-0001"


def track(mid: str) -> dict:
    return {"type": "track", "event": "Clicked", "userId": "u1", "messageId": mid}


def test_write_keys_are_found_by_digest(tmp_path):
    home = Home(tmp_path)
    generated = home.add_source("web")
    home.add_source("app", KEY)
    keys = WriteKeys(home)
    assert (keys.source(generated), keys.source(KEY)) == ("web", "app")
    assert keys.source(KEY[:-1]) is None
    assert keys.source(home.sources()[0].key_digest) is None  # the stored digest is not a key
    assert generated not in home.sources_path.read_text() and KEY not in home.sources_path.read_text()


def test_per_key_limit_allows_bursts_of_twice_the_rate_then_429s():
    limits = RateLimits(per_key_per_s=2, auth_failures_per_minute=0)
    for _ in range(4):  # burst: 2 × 2/s
        limits.admit_key("web")
    with pytest.raises(RateLimited, match=r"Rate limit exceeded: 2 requests/s per write key \(bursts up to 4\)") as e:
        limits.admit_key("web")
    assert e.value.field == "collector.rate_limit_per_key" and 1 <= e.value.retry_after_s <= 2
    limits.admit_key("app")  # per key: another source is not affected
    off = RateLimits(per_key_per_s=0, auth_failures_per_minute=0)
    for _ in range(10_000):
        off.admit_key("web")
    slow = RateLimits(per_key_per_s=0.25, auth_failures_per_minute=0)  # 1 request per 4 s
    slow.admit_key("web")
    with pytest.raises(RateLimited) as e:
        slow.admit_key("web")
    assert 1 <= e.value.retry_after_s <= 4


def test_failed_authentications_are_limited_per_address():
    limits = RateLimits(per_key_per_s=0, auth_failures_per_minute=3)
    for _ in range(3):
        limits.check_client("10.0.0.1")
        limits.auth_failed("10.0.0.1")
    with pytest.raises(RateLimited, match="Too many failed authentications from this address \\(limit 3 a minute\\)") as e:
        limits.check_client("10.0.0.1")
    assert 50 <= e.value.retry_after_s <= 60
    limits.check_client("10.0.0.2")  # another address is not affected
    RateLimits(per_key_per_s=0, auth_failures_per_minute=0).check_client("10.0.0.1")


def test_collector_answers_429_with_retry_after_and_loses_nothing_accepted(tmp_path):
    env = {"HEADWATER_COLLECTOR_RATE_LIMIT_PER_KEY": "5", "HEADWATER_COLLECTOR_AUTH_FAILURES_PER_MINUTE": "4"}
    with start_collector(tmp_path, write_key=KEY, source="web", env=env) as c, httpx.Client(base_url=c.url, timeout=10) as http:
        events = LogTail(c.log, "events")
        statuses, accepted = [], []
        for i in range(30):
            r = http.post("/v1/batch", headers=basic(KEY), json={"batch": [track(f"m-{i}")]})
            statuses.append(r.status_code)
            if r.status_code == 200:
                accepted.append(f"m-{i}")
            else:
                assert r.status_code == 429, r.text
                assert r.json()["code"] == "rate_limited" and "5 requests/s per write key" in r.json()["message"]
                assert 1 <= int(r.headers["retry-after"]) <= 2
        assert 10 <= statuses.count(200) < 30 and 429 in statuses
        assert sorted(e["event_id"] for e in events.rows()) == sorted(accepted)  # 200 = stored; 429 = nothing stored
        # the body's writeKey is limited the same way (no Authorization header)
        time.sleep(2.1)
        codes = [http.post("/v1/batch", json={"writeKey": KEY, "batch": [track(f"b-{i}")]}).status_code for i in range(15)]
        assert codes.count(200) >= 10 and 429 in codes

        # Key guessing from one address: 4 failures (401), then 429 for everything, the right key too.
        for i in range(4):
            assert http.post("/v1/batch", headers=basic(f"guess-{i:016d}"), json={"batch": [track("g")]}).status_code == 401
        r = http.post("/v1/batch", headers=basic(KEY), json={"batch": [track("after-guessing")]})
        assert r.status_code == 429 and "Too many failed authentications" in r.json()["message"]
        assert 50 <= int(r.headers["retry-after"]) <= 60
        assert "after-guessing" not in {e["event_id"] for e in events.rows()}


def test_moving_window_admits_again_as_hits_leave_it_and_forgets_idle_keys(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    window = MovingWindow(2, 10.0)
    assert window.hit("a") and window.hit("a") and not window.hit("a") and not window.test("a")
    assert window.retry_after_s("a") == 10
    clock[0] += 10.0
    assert window.test("a") and window.hit("a")  # both earlier hits left the window
    for i in range(1000):  # a scan from many addresses
        window.hit(f"10.0.{i // 256}.{i % 256}")
    clock[0] += 10.5
    window.hit("b")
    assert set(window._hits) == {"b"}  # memory: only the keys active in the last window
