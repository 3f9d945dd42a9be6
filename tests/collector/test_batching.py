"""Requests that reach the log step in the same turn of the event loop are scrubbed,
partitioned and submitted together (``Collector.record_batched``): one group-commit
submission weighing as many requests, each source's events under its own PII policy, and
``collector.max_queue`` still counting requests."""

from __future__ import annotations

import asyncio
import json
import time

from headwater.collector import segment
from headwater.collector.collector import Collector
from headwater.config import Home, PiiPolicy
from headwater.log import open_log
from headwater.settings import load
from tests.helpers import read_topic

from .test_backpressure import write_locked

WIRE = segment.wire(None)


def request(collector: Collector, source: str, name: str, n: int = 3):
    """The validated events of a Segment batch of ``n`` tracks ``<name>-<i>`` from ``source``
    (context with an IP), plus one message without ``event`` (a bad row)."""
    batch = [{"type": "track", "event": "Clicked", "userId": f"u{i}", "messageId": f"{name}-{i}",
              "context": {"ip": "10.1.2.3", "library": {"name": "analytics.js"}}} for i in range(n)]
    batch.append({"type": "track", "userId": "u", "messageId": f"{name}-bad"})
    env = WIRE.read(json.dumps({"batch": batch}).encode(), {}, "application/json", segment.Limits())
    norm = collector.validate(env, WIRE, source=source, received_at_us=time.time_ns() // 1000)
    return source, norm.events, norm.bad_rows


def make_home(tmp_path, **settings) -> Home:
    home = Home(tmp_path / "home", load(home=tmp_path / "home", **settings))
    home.add_source("web", "wk-batching-web-0001")
    home.add_source("app", "wk-batching-app-0001")
    home.update_source("app", pii=PiiPolicy(keep=("ip",)))
    return home


def serve(home: Home, body) -> tuple[Collector, list]:
    """Run ``body(collector, weights)`` on a started collector; returns its result and the
    weights of the collector's submissions to its group-commit writer."""
    log = open_log(home.settings.log_url)
    collector = Collector.from_home(home, log)
    weights = []

    async def main():
        collector.start()
        submit = collector._writer.submit
        collector._writer.submit = lambda appends, weight=1: (weights.append(weight), submit(appends, weight))[1]
        try:
            return await body(collector, weights)
        finally:
            collector.close()

    return asyncio.run(main()), weights


def test_requests_ready_together_are_one_submission_each_source_under_its_own_policy(tmp_path):
    home = make_home(tmp_path)

    async def body(collector, _):
        requests = [request(collector, "web", "w1"), request(collector, "app", "a1"), request(collector, "web", "w2")]
        await asyncio.gather(*(collector.record_batched(*r) for r in requests))

    _, weights = serve(home, body)
    assert weights == [3]
    log = open_log(home.settings.log_url)
    events = read_topic(log, "events").to_pylist()
    assert sorted(e["event_id"] for e in events) == sorted(f"{r}-{i}" for r in ("w1", "a1", "w2") for i in range(3))
    for e in events:  # web drops the IP (the default policy), app keeps it
        assert ("10.1.2.3" in e["context"]) == (e["source"] == "app"), e
    bad = read_topic(log, "bad_rows").to_pylist()
    assert sorted(json.loads(b["payload"])["messageId"] for b in bad) == ["a1-bad", "w1-bad", "w2-bad"]


def test_a_batch_past_the_queue_room_refuses_only_the_requests_that_do_not_fit(tmp_path):
    home = make_home(tmp_path, **{"collector.max_queue": 2})

    async def body(collector, weights):
        with write_locked(collector.log):
            first = asyncio.ensure_future(collector.record_batched(*request(collector, "web", "first")))
            while not weights or collector._writer.waiting:  # submitted and taken by the writer, blocked on the lock
                await asyncio.sleep(0.01)
            batch = [asyncio.ensure_future(collector.record_batched(*request(collector, "web", f"b{k}"))) for k in range(3)]
            await asyncio.sleep(0.3)
        await asyncio.gather(first, *batch, return_exceptions=True)
        return [type(t.exception()).__name__ if t.exception() else None for t in batch]

    outcomes, weights = serve(home, body)
    assert weights == [1, 2]  # max_queue 2, the writer busy with the first: two of the batch of three fit
    assert outcomes == [None, None, "QueueFull"]


def test_requests_arriving_while_the_previous_submission_commits_wait_and_form_one_batch(tmp_path):
    home = make_home(tmp_path)

    async def body(collector, weights):
        with write_locked(collector.log):
            first = asyncio.ensure_future(collector.record_batched(*request(collector, "web", "first")))
            while not weights or collector._writer.waiting:  # submitted and taken by the writer, blocked on the lock
                await asyncio.sleep(0.01)
            later = []
            for k in range(3):  # in three turns of the event loop
                later.append(asyncio.ensure_future(collector.record_batched(*request(collector, "web", f"l{k}"))))
                await asyncio.sleep(0.02)
            assert collector.queued == 3 and weights == [1]  # held back, counted against collector.max_queue
        await asyncio.gather(first, *later)

    _, weights = serve(home, body)
    assert weights == [1, 3]
    events = read_topic(open_log(home.settings.log_url), "events").to_pylist()
    assert len(events) == 12
