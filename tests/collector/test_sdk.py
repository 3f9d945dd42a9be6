"""The real Segment Python SDK against the real collector: events arrive unchanged in meaning."""

from __future__ import annotations

import datetime as dt
import json

from segment.analytics import Client

from .conftest import SOURCE, WRITE_KEY

USER, ANON = "carol@example.net", "a0c1-anon"


def test_segment_sdk_roundtrip(collector, events, bad_rows, tokenizer):
    errors = []
    client = Client(WRITE_KEY, host=collector.url, gzip=True, on_error=lambda e, batch: errors.append(e), max_retries=1, upload_interval=0.1)
    when = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.timezone.utc)
    client.track(user_id=USER, event="Order Completed", properties={"revenue": 19.9}, message_id="sdk-track", timestamp=when)
    client.identify(user_id=USER, traits={"plan": "team"}, message_id="sdk-identify")
    client.page(anonymous_id=ANON, category="Docs", name="Getting Started", properties={"path": "/docs"}, message_id="sdk-page")
    client.screen(user_id=USER, name="Home", message_id="sdk-screen")
    client.alias(previous_id=ANON, user_id=USER, message_id="sdk-alias")
    client.group(user_id=USER, group_id="acme", traits={"tier": "gold"}, message_id="sdk-group")
    client.flush()
    client.shutdown()
    assert errors == []

    rows = {r["event_id"]: r for r in events.rows()}
    assert sorted(rows) == ["sdk-alias", "sdk-group", "sdk-identify", "sdk-page", "sdk-screen", "sdk-track"]
    assert {i: r["event_type"] for i, r in rows.items()} == {
        "sdk-track": "track", "sdk-identify": "identify", "sdk-page": "page",
        "sdk-screen": "screen", "sdk-alias": "alias", "sdk-group": "group",
    }
    assert rows["sdk-track"]["event_name"] == "Order Completed"
    assert json.loads(rows["sdk-track"]["properties"]) == {"revenue": 19.9}
    # the SDK stamped sentAt at upload time; the skew correction keeps an accurate clock's time
    assert abs(rows["sdk-track"]["event_ts"] - when) < dt.timedelta(seconds=5)
    assert rows["sdk-page"]["event_name"] == "Getting Started"
    assert rows["sdk-page"]["anonymous_id"] == tokenizer(ANON) and rows["sdk-page"]["user_id"] is None
    assert json.loads(rows["sdk-alias"]["properties"]) == {"previousId": tokenizer(ANON)}
    assert json.loads(rows["sdk-group"]["properties"]) == {"tier": "gold", "groupId": "acme"}
    for r in rows.values():
        assert (r["source"], r["surface"], r["platform"]) == (SOURCE, "server", "server")
        assert json.loads(r["context"])["library"]["name"] == "analytics-python"
        assert USER not in json.dumps(r, default=str) and ANON not in json.dumps(r, default=str)
        if r["user_id"] is not None:
            assert r["user_id"] == tokenizer(USER)
    assert bad_rows.rows() == []
