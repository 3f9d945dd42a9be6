"""The data-quality checks of one day, each a list of :class:`Result` rows of ``quality.results``.

============================  ==========================================================  ========
check                         rule (settings section ``quality``)                          on break
============================  ==========================================================  ========
``freshness_realtime``        the oldest event the stream has not committed waited at      fail
                              most ``realtime_max_delay_s`` (per ``realtime.*`` table)
``freshness_gold``            gold of ``ds`` is published by ``ds + 1`` at                 fail
                              ``gold_ready_by_utc`` (marker: ``gold.active_users``)
``completeness_bronze``       per hour of receipt: every (source, event_id) the collector  fail,
                              appended to the log and the stream consumed is in bronze      blocking
``completeness_silver``       per hour of receipt: every bronze key whose first copy lies  fail,
                              in silver's built ``ds`` range is in ``silver.events``        blocking
``volume``                    per event name (and ``*``, all events): robust z-score of    warn
                              the day's count (:mod:`~headwater.quality.anomaly`) < z
``conversion``                per step ``a -> b`` of each configured funnel: robust         warn
                              z-score of the day's ``count(b) / count(a)`` < z
``bad_row_rate``              bad rows of known sources / (events + those bad rows) of     fail,
                              ``ds`` ≤ ``bad_row_rate_max``                                 blocking
``schema_drift``              no event name or top-level property key unseen in the        warn
                              previous ``volume_weeks`` weeks
============================  ==========================================================  ========

A check whose tables do not exist yet returns no rows. Anomalies *warn*: they are signals for a
person (a viral day is not an error); a *fail* breaks a promise the platform makes. A failed
*blocking* check means gold computed from that day would be wrong: the Dagster asset checks
(:mod:`headwater.orchestrate.checks`, over the run's ``ds`` window: :func:`missing_from_log`,
:data:`MISSING_FROM_SILVER`, :func:`bad_row_rates`) stop the day's gold partitions on it.
Which checks block:

* completeness (log → bronze → silver): events the platform accepted and then lost; every
  gold table of the day would undercount them;
* the bad-row rate: events a source sent and the collector rejected are missing from gold the
  same way (a broken client release), beyond a tolerated rate. They can be fixed and
  replayed (``headwater badrows replay``): the late-data sensor then restates the day, whose
  checks pass. Auth failures are left out of the rate: they belong to no known source, and
  counting them would let any stranger without a write key hold back a day's gold;
* not freshness (holding back a late day makes it later), nor anomalies and drift (a viral
  day is real data).

``conversion`` counts events per day, not ordered
per-person paths (``gold.funnels``): a proxy that needs no gold build and moves with the
funnel's step conversion. Counts read ``silver.events`` by ``ds`` (event time, duplicates
removed); completeness counts by the collector's ``received_at`` hour.
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from headwater.config import Home
from headwater.errors import NotFoundError
from headwater.events import AUTH_FAILURE, EVENTS_TOPIC, STREAM_GROUP
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.log import open_log
from headwater.log.base import EventLog, oldest_unconsumed_ms
from headwater.models import config as model_config
from headwater.quality.anomaly import log_count, seasonal_score
from headwater.settings import QualitySettings

Status = Literal["pass", "warn", "fail"]
LOG_CHUNK = 500_000  # log offsets decoded at a time by the completeness check (bounds memory)
GOLD_MARKER = "gold.active_users"  # one row per built ds: its partition says the day's gold is published
# The first copy of each bronze event key, as silver.events keeps it (earliest received_at).
FIRST_COPIES = """
SELECT source, event_id, min(received_at) AS received_at, arg_min(ds, received_at) AS ds
FROM bronze.events GROUP BY source, event_id
"""
# Bronze keys whose first copy lies in ds $first .. $last (NULL: silver's built ds range) but
# that silver lacks: the window form of completeness_silver (a blocking Dagster asset check of
# silver.events over the run's partitions).
MISSING_FROM_SILVER = f"""
SELECT f.source, f.event_id, f.received_at, f.ds FROM ({FIRST_COPIES}) AS f
ANTI JOIN silver.events AS s USING (source, event_id)
WHERE f.ds BETWEEN coalesce($first, (SELECT min(ds) FROM silver.events))
               AND coalesce($last, (SELECT max(ds) FROM silver.events))
"""
KEY_SCHEMA = pa.schema([pa.field("source", pa.string()), pa.field("event_id", pa.string()),
                        pa.field("received_at", pa.timestamp("us", tz="UTC")), pa.field("ds", pa.date32())])


@dataclass(frozen=True)
class Result:
    """One row of ``quality.results`` (schema :data:`headwater.lake.schemas.QUALITY_RESULTS_SCHEMA`)
    without ``checked_at``, which the run adds."""

    check: str
    table: str
    status: Status
    message: str
    subject: str | None = None
    ds: dt.date | None = None
    hour: dt.datetime | None = None
    blocking: bool = False
    observed: float | None = None
    expected: str | None = None


def run(home: Home, ds: dt.date, now: dt.datetime) -> list[Result]:
    """Every check of the module table for day ``ds`` (UTC) at wall-clock time ``now`` (aware)."""
    q = home.settings.quality
    lake = Lake.of(home)
    log = open_log(home.settings.log_url)
    try:
        out = freshness_realtime(lake, log, now, q) + completeness_bronze(lake, log, ds)
    finally:
        log.close()
    counts = daily_counts(lake, ds, max(q.volume_weeks, q.conversion_weeks) * 7 + q.conversion_window_days - 1)
    return [
        *out, *freshness_gold(lake, ds, now, q), *completeness_silver(lake, ds),
        *volume(lake, ds, counts, q), *conversion(home, lake, ds, counts, q),
        *bad_row_rate(lake, ds, q), *schema_drift(lake, ds, q),
    ]


def realtime(home: Home, now: dt.datetime) -> list[Result]:
    """:func:`freshness_realtime` of ``home`` at ``now``: the check that runs every minute
    (:mod:`headwater.orchestrate.monitor`), not only with a day's checks."""
    log = open_log(home.settings.log_url)
    try:
        return freshness_realtime(Lake.of(home), log, now, home.settings.quality)
    finally:
        log.close()


def _day_bounds(ds: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(ds, dt.time(), dt.timezone.utc)
    return start, start + dt.timedelta(days=1)


# -- freshness --------------------------------------------------------------------------------
def freshness_realtime(lake: Lake, log: EventLog, now: dt.datetime, q: QualitySettings) -> list[Result]:
    """Per existing ``realtime.*`` table: how long the oldest uncommitted event has waited
    (s; 0 when the stream is caught up). The stream commits every realtime table in the same
    micro-batch as bronze (one consumer group), so that wait is each table's delay behind
    the collector — a measure that stays right when no events arrive (a quiet table is not
    stale) and when the stream stops (the wait grows)."""
    tables = [t for t in lake.tables() if t.startswith("realtime.")]
    if not tables:
        return []
    oldest = oldest_unconsumed_ms(log, STREAM_GROUP, EVENTS_TOPIC)
    delay = 0.0 if oldest is None else max(0.0, now.timestamp() - oldest / 1000)
    ok = delay <= q.realtime_max_delay_s
    return [Result("freshness_realtime", t, "pass" if ok else "fail",
                   f"oldest event not yet in {t} waited {delay:.1f} s" if oldest else f"{t} is caught up with the log",
                   observed=round(delay, 3), expected=f"<= {q.realtime_max_delay_s:g} s") for t in tables]


def freshness_gold(lake: Lake, ds: dt.date, now: dt.datetime, q: QualitySettings) -> list[Result]:
    """Whether gold of ``ds`` (a day with events in bronze) is published — ``ds`` in
    :data:`GOLD_MARKER` — and, if not, whether ``ds + 1`` at ``gold_ready_by_utc`` has passed.
    ``observed``: hours past (negative: before) the deadline."""
    if ds not in lake.ds_days("bronze.events"):
        return []
    due = dt.datetime.combine(ds + dt.timedelta(days=1), q.gold_ready_by_utc, dt.timezone.utc)
    late_h = round((now - due).total_seconds() / 3600, 3)
    expected = f"published by {due:%Y-%m-%d %H:%M} UTC"
    if ds in lake.ds_days(GOLD_MARKER):
        return [Result("freshness_gold", GOLD_MARKER, "pass", f"gold of {ds} is published", ds=ds, observed=late_h, expected=expected)]
    if late_h < 0:
        return [Result("freshness_gold", GOLD_MARKER, "pass", f"gold of {ds} not published yet; due in {-late_h:.1f} h",
                       ds=ds, observed=late_h, expected=expected)]
    return [Result("freshness_gold", GOLD_MARKER, "fail", f"gold of {ds} is {late_h:.1f} h past its SLA",
                   ds=ds, observed=late_h, expected=expected)]


# -- completeness -----------------------------------------------------------------------------
def consumed_keys(log: EventLog, column: str, lo: dt.date | dt.datetime, hi: dt.date | dt.datetime) -> pa.Table:
    """``(source, event_id, received_at, ds)`` of each event key the stream has consumed from
    the log with a copy whose ``column`` (``received_at`` or ``ds``) lies in ``[lo, hi)`` (the
    earliest ``received_at`` and ``ds`` of those copies); empty if the topic does not exist.
    Reads the retained log in chunks of :data:`LOG_CHUNK` offsets and keeps only the rows in
    range, so memory follows the range's volume. (A key first received before the range and
    re-sent in it counts too: harmless, the checks ask whether a key is in bronze.)"""
    try:
        done = log.committed(STREAM_GROUP, EVENTS_TOPIC)
        log.end_offsets(EVENTS_TOPIC)
    except NotFoundError:
        return KEY_SCHEMA.empty_table()
    lo, hi = (pa.scalar(v, KEY_SCHEMA.field(column).type) for v in (lo, hi))
    parts = []
    for p, end in done.items():
        for start in range(0, end, LOG_CHUNK):
            events = log.read(EVENTS_TOPIC, p, start, min(start + LOG_CHUNK, end), KEY_SCHEMA).events
            at = events.column(column)
            parts.append(events.select(KEY_SCHEMA.names).filter(pc.and_(pc.greater_equal(at, lo), pc.less(at, hi))))
    if not parts:
        return KEY_SCHEMA.empty_table()
    keys = pa.concat_tables(parts).group_by(["source", "event_id"]).aggregate([("received_at", "min"), ("ds", "min")])
    return keys.rename_columns(KEY_SCHEMA.names)


def _not_in_bronze(lake: Lake, keys: pa.Table, sql: str) -> pa.Table:
    """``sql`` over ``keys`` (a registered table) and ``bronze_keys`` (the distinct event keys of
    ``bronze.events``)."""
    with lake_sql.session(lake, "SELECT * FROM bronze.events") as con, lake_sql.errors():
        con.register("keys", keys)
        con.sql("CREATE TEMP VIEW bronze_keys AS SELECT DISTINCT source, event_id FROM bronze.events")
        return con.sql(sql).to_arrow_table()


def missing_from_log(lake: Lake, log: EventLog, start: dt.date, end: dt.date) -> pa.Table:
    """Event keys (:data:`KEY_SCHEMA`, ordered) the stream consumed from the log with ``ds``
    in ``[start, end]`` that ``bronze.events`` lacks: events of those days the platform
    accepted and lost (empty while bronze does not exist). The window form of
    :func:`completeness_bronze`, a blocking asset check of the run's partitions."""
    keys = consumed_keys(log, "ds", start, end + dt.timedelta(days=1))
    if not keys.num_rows or not lake.exists("bronze.events"):
        return KEY_SCHEMA.empty_table()
    return _not_in_bronze(lake, keys, "SELECT * FROM keys ANTI JOIN bronze_keys USING (source, event_id) ORDER BY ALL")


def _missing_by_hour(check: str, table: str, rows: pa.Table, ds: dt.date, source: str) -> list[Result]:
    """Results of a per-hour ``(hour, expected, missing)`` table: fail (blocking) when any
    key is missing."""
    out = []
    for r in rows.to_pylist():
        missing, want = r["missing"], r["expected"]
        out.append(Result(check, table, "fail" if missing else "pass",
                          f"{missing} of {want} {source} events received in this hour are not in {table}",
                          ds=ds, hour=r["hour"], blocking=True, observed=float(missing), expected=f"0 missing of {want}"))
    return out


def completeness_bronze(lake: Lake, log: EventLog, ds: dt.date) -> list[Result]:
    """Per hour of receipt on ``ds``: the log's consumed event keys missing from
    ``bronze.events`` (the stream promises each exactly once). Only the log's retained
    records can be judged (``log.retention_ms``)."""
    keys = consumed_keys(log, "received_at", *_day_bounds(ds))
    if not keys.num_rows or not lake.exists("bronze.events"):
        return []
    rows = _not_in_bronze(lake, keys, """
        SELECT date_trunc('hour', k.received_at) AS hour, count(*) AS expected,
               count(*) FILTER (WHERE b.event_id IS NULL) AS missing
        FROM keys AS k LEFT JOIN bronze_keys AS b USING (source, event_id)
        GROUP BY ALL ORDER BY hour
    """)
    return _missing_by_hour("completeness_bronze", "bronze.events", rows, ds, "accepted (log)")


def completeness_silver(lake: Lake, ds: dt.date) -> list[Result]:
    """Per hour of receipt on ``ds``: bronze keys (first copy) whose ``ds`` lies in silver's
    built range but that ``silver.events`` lacks."""
    built = lake.ds_range("silver.events")
    if built is None:
        return []
    lo, hi = _day_bounds(ds)
    sql = f"""
        WITH first AS ({FIRST_COPIES})
        SELECT date_trunc('hour', f.received_at) AS hour, count(*) AS expected,
               count(*) FILTER (WHERE s.event_id IS NULL) AS missing
        FROM first AS f LEFT JOIN silver.events AS s USING (source, event_id)
        WHERE f.received_at >= $lo AND f.received_at < $hi AND f.ds BETWEEN $first AND $last
        GROUP BY ALL ORDER BY hour
    """
    rows = lake_sql.query(lake, sql, {"lo": lo, "hi": hi, "first": built[0], "last": built[1]})
    return _missing_by_hour("completeness_silver", "silver.events", rows, ds, "bronze")


# -- anomalies --------------------------------------------------------------------------------
Counts = dict[tuple[str, dt.date], int]


def daily_counts(lake: Lake, ds: dt.date, days: int) -> tuple[Counts, dt.date | None]:
    """Events per ``(event_name, ds)`` of ``silver.events`` (``"*"``: all events) over ``ds``
    and the ``days`` days before, and silver's first ``ds``; ``({}, None)`` while silver has
    not been built up to ``ds`` (a day not built yet is no anomaly: ``freshness_gold`` says
    it is late)."""
    span = lake.ds_range("silver.events")
    if span is None or not span[0] <= ds <= span[1]:
        return {}, None
    rows = lake_sql.query(lake, """
        SELECT coalesce(event_name, '') AS event_name, ds, count(*) AS n FROM silver.events
        WHERE ds BETWEEN $start AND $ds GROUP BY ALL
    """, {"start": ds - dt.timedelta(days=days), "ds": ds}).to_pylist()
    counts: Counts = {}
    for r in rows:
        counts[(r["event_name"], r["ds"])] = r["n"]
        counts[("*", r["ds"])] = counts.get(("*", r["ds"]), 0) + r["n"]
    return counts, span[0]


def volume(lake: Lake, ds: dt.date, data: tuple[Counts, dt.date | None], q: QualitySettings) -> list[Result]:
    """Per event name (and ``*``): the robust z-score of ``ln(1 + events)`` on ``ds`` against
    the same weekday of the last ``volume_weeks`` weeks (at least ``min_weeks``); judged when
    the baseline median is at least ``volume_min_count`` events. ``observed``: the day's count."""
    counts, first = data
    if first is None:
        return []
    out = []
    for name in sorted({n for n, d in counts if d.weekday() == ds.weekday()}):
        history = [counts.get((name, d), 0) for d in _weeks(ds, q.volume_weeks, first)]
        score = seasonal_score(ds, lambda d: log_count(counts.get((name, d), 0)), first_day=first,
                               weeks=q.volume_weeks, min_weeks=q.min_weeks, min_scale=q.volume_min_scale)
        if score is None or statistics.median(history) < q.volume_min_count:
            continue
        n, base = counts.get((name, ds), 0), statistics.median(history)
        flagged = abs(score.z) >= q.anomaly_z
        out.append(Result("volume", "silver.events", "warn" if flagged else "pass",
                          f"{n} events vs a median of {base:g} on the last {score.history} {ds:%A}s (z = {score.z:+.2f})",
                          subject=name, ds=ds, observed=float(n), expected=f"|z| < {q.anomaly_z:g}"))
    return out


def _weeks(ds: dt.date, weeks: int, first: dt.date) -> list[dt.date]:
    return [d for d in (ds - dt.timedelta(weeks=k) for k in range(1, weeks + 1)) if d >= first]


def conversion(home: Home, lake: Lake, ds: dt.date, data: tuple[Counts, dt.date | None], q: QualitySettings) -> list[Result]:
    """Per consecutive step pair ``a -> b`` of each funnel of the models configuration: the
    robust z-score of the rate ``count(b) / count(a)`` over the ``conversion_window_days``
    days ending on ``ds`` against the same window ending on the same weekday of the last
    ``conversion_weeks`` weeks (with the default 7 days: the previous non-overlapping weeks,
    so the weekly cycle cancels). A window with fewer than ``conversion_min_count`` ``a``
    events has no rate (neither judged nor in a baseline). ``observed``: the window's rate."""
    counts, first = data
    if first is None:
        return []
    out = []
    for funnel in model_config.load(home).funnels:
        for a, b in zip(funnel.steps, funnel.steps[1:]):
            def rate(d: dt.date, a=a, b=b) -> float | None:
                window = [d - dt.timedelta(days=i) for i in range(q.conversion_window_days)]
                n = sum(counts.get((a, w), 0) for w in window)
                return sum(counts.get((b, w), 0) for w in window) / n if n >= q.conversion_min_count else None

            score = seasonal_score(ds, rate, first_day=first, weeks=q.conversion_weeks,
                                   min_weeks=q.min_weeks, min_scale=q.conversion_min_scale)
            if score is None:
                continue
            flagged = abs(score.z) >= q.anomaly_z
            out.append(Result("conversion", "silver.events", "warn" if flagged else "pass",
                              f"{funnel.name}: {b}/{a} over {q.conversion_window_days} days = {score.value:.2f} vs a "
                              f"median of {score.median:.2f} in the {score.history} weeks before (z = {score.z:+.2f})",
                              subject=f"{funnel.name}: {a} -> {b}", ds=ds, observed=round(score.value, 4),
                              expected=f"|z| < {q.anomaly_z:g}"))
    return out


# -- bad rows and drift -----------------------------------------------------------------------
def bad_row_rate(lake: Lake, ds: dt.date, q: QualitySettings) -> list[Result]:
    """:func:`bad_row_rates` of the one day ``ds``."""
    return bad_row_rates(lake, ds, ds, q)


def bad_row_rates(lake: Lake, start: dt.date, end: dt.date, q: QualitySettings) -> list[Result]:
    """Per ``ds`` in ``[start, end]`` with rows: ``bronze.bad_rows`` / (``bronze.events`` +
    ``bronze.bad_rows``) rows of that ``ds``, auth failures left out (module docstring);
    blocking. One query for the whole window (a ranged run's gate)."""
    if not lake.exists("bronze.events"):
        return []
    bad = (f"SELECT ds, 0 AS good, count(*) AS bad FROM bronze.bad_rows WHERE ds BETWEEN $start AND $end "
           f"AND error_type <> '{AUTH_FAILURE}' GROUP BY ds") if lake.exists("bronze.bad_rows") else "SELECT NULL, 0, 0 WHERE false"
    rows = lake_sql.query(lake, f"""
        SELECT ds, sum(good)::BIGINT AS good, sum(bad)::BIGINT AS bad FROM (
            SELECT ds, count(*) AS good, 0 AS bad FROM bronze.events WHERE ds BETWEEN $start AND $end GROUP BY ds
            UNION ALL {bad}
        ) GROUP BY ds ORDER BY ds
    """, {"start": start, "end": end}).to_pylist()
    out = []
    for row in rows:
        total, rate = row["good"] + row["bad"], row["bad"] / (row["good"] + row["bad"])
        out.append(Result("bad_row_rate", "bronze.bad_rows", "fail" if rate > q.bad_row_rate_max else "pass",
                          f"{row['bad']} bad rows of {total} rows received for {row['ds']} (auth failures not counted)",
                          ds=row["ds"], blocking=True, observed=round(rate, 6), expected=f"<= {q.bad_row_rate_max:g}"))
    return out


def schema_drift(lake: Lake, ds: dt.date, q: QualitySettings) -> list[Result]:
    """Event names, and top-level property keys per event name, in ``silver.events`` on
    ``ds`` that the previous ``volume_weeks`` weeks never had (judged once that history
    holds data). One warning per new name or per event name with new keys; one pass
    otherwise."""
    if ds not in lake.ds_days("silver.events"):
        return []
    start = ds - dt.timedelta(weeks=q.volume_weeks)
    rows = lake_sql.query(lake, """
        WITH keys AS (
            SELECT DISTINCT ds = $ds AS today, coalesce(event_name, '') AS event_name,
                   unnest(coalesce(json_keys(properties), [])) AS key
            FROM silver.events WHERE ds BETWEEN $start AND $ds
            UNION
            SELECT DISTINCT ds = $ds, coalesce(event_name, ''), NULL FROM silver.events WHERE ds BETWEEN $start AND $ds
        )
        SELECT event_name, key, bool_and(today) AS new FROM keys GROUP BY ALL
    """, {"ds": ds, "start": start}).to_pylist()
    if all(r["new"] for r in rows):
        return []  # no history to compare with
    names = {r["event_name"] for r in rows if r["key"] is None and r["new"]}
    out = [Result("schema_drift", "silver.events", "warn", f"new event name {n!r}", subject=n, ds=ds, observed=1.0,
                  expected=f"seen in the previous {q.volume_weeks} weeks") for n in sorted(names)]
    new_keys: dict[str, list[str]] = {}
    for r in rows:
        if r["key"] is not None and r["new"] and r["event_name"] not in names:
            new_keys.setdefault(r["event_name"], []).append(r["key"])
    out += [Result("schema_drift", "silver.events", "warn", f"{n!r} has new properties: {', '.join(sorted(k))}",
                   subject=n, ds=ds, observed=float(len(k)), expected=f"seen in the previous {q.volume_weeks} weeks")
            for n, k in sorted(new_keys.items())]
    return out or [Result("schema_drift", "silver.events", "pass", "no new event names or properties", ds=ds,
                          observed=0.0, expected=f"seen in the previous {q.volume_weeks} weeks")]
