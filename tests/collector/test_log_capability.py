"""The collector on a log without ``atomic_multi_topic_append``: a request's events and bad
rows are two appends; if one fails the request is answered 503 (the SDK retries)."""

import asyncio

import httpx

from headwater.collector.app import create_app
from headwater.collector.collector import Collector
from headwater.config import Home
from tests.helpers import PerTopicLog, read_topic

from .conftest import basic


def test_events_and_bad_rows_are_separate_appends_and_a_failed_one_answers_503(tmp_path):
    home = Home(tmp_path / "home")
    home.add_source("web", "wk-log-capability-test")
    log = PerTopicLog.from_url(home.settings.log_url)
    collector = Collector.from_home(home, log)

    def batch(event_id: str) -> dict:
        return {"batch": [{"type": "track", "event": "Paid", "userId": "u1", "messageId": event_id}, {"type": "nope", "messageId": "bad"}]}

    async def requests() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(collector))
        async with httpx.AsyncClient(transport=transport, base_url="http://collector", headers=basic("wk-log-capability-test")) as client:
            ok = await client.post("/v1/batch", json=batch("ok-1"))
            log.fail_topic = "bad_rows"
            return ok, await client.post("/v1/batch", json=batch("ok-2"))

    collector.start()  # what the ASGI lifespan does
    try:
        ok, failed = asyncio.run(requests())
    finally:
        collector.close()
    assert ok.status_code == 200 and (ok.json()["accepted"], ok.json()["rejected"]) == (1, 1)
    assert failed.status_code == 503 and "broker unavailable" in failed.json()["message"]
    # The 503's events were stored (the SDK's retry re-sends them: deduplicated by event_id);
    # its bad row was not.
    assert sorted(read_topic(log, "events").column("event_id").to_pylist()) == ["ok-1", "ok-2"]
    assert read_topic(log, "bad_rows").num_rows == 1
    log.close()
