"""Asset checks for the batch layer's invariants and the gate of gold publication, run after
every materialisation of their asset.

Invariants of the whole table:

* ``silver/events: event_id_unique`` — silver holds each ``event_id`` once over the whole
  table (a re-send's copy can sit in another ``ds`` partition, so the check is not per day);
* ``silver/events: subset_of_bronze`` — every silver row is one delivery of bronze: its
  ``(event_id, received_at)`` exists in ``bronze.events`` (nothing invented, nothing kept
  after bronze lost it);
* ``silver/dim_user: one_current_row_per_user`` — SCD2: each user key has exactly one row
  with ``is_current``. Defined only when a model builds ``silver.dim_user``; passes with a
  note while that table does not exist yet.

The gate, over the run's ``ds`` window (:func:`run_window`: the partition or partition range
the run builds; silver's built ``ds`` range in an unpartitioned run) — the blocking
data-quality checks of :mod:`headwater.quality.checks` (which ones block, and why, is said
there):

* ``silver/events: complete_from_log`` — every event of the window's days that the stream
  consumed from the log is in ``bronze.events`` (:func:`~headwater.quality.checks.missing_from_log`);
* ``silver/events: complete_from_bronze`` — every bronze event key whose first copy lies in
  the window is in silver (:data:`~headwater.quality.checks.MISSING_FROM_SILVER`);
* ``silver/events: bad_row_rate`` — no day of the window rejected more than
  ``quality.bad_row_rate_max`` of its rows (:func:`~headwater.quality.checks.bad_row_rates`).

All but ``one_current_row_per_user`` are *blocking*: in a run that also builds gold, a failed
check stops every step downstream of ``silver.events`` (all gold), so gold is never computed
from a silver that breaks them. Dagster gates per run, and the daily schedule runs one
partition per run: a failure on day D keeps D's gold unpublished while the other days'
runs publish theirs. (A ranged backfill run is gated as a whole.) Each failure carries the
count and up to :data:`SAMPLE` offending keys (or days) as metadata.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, asset_check

from headwater.config import Home
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.log import open_log
from headwater.models.dag import Model
from headwater.orchestrate.assets import asset_key
from headwater.quality import checks as quality

Window = tuple[dt.date, dt.date]

SAMPLE = 10

DUPLICATE_EVENT_IDS = """
SELECT event_id, count(*) AS copies FROM silver.events GROUP BY event_id HAVING count(*) > 1
"""
NOT_IN_BRONZE = """
SELECT s.event_id, s.received_at FROM silver.events AS s
ANTI JOIN bronze.events AS b ON b.event_id = s.event_id AND b.received_at = s.received_at
"""
# Users whose count of current rows is not exactly one: 0 (every version closed) or > 1.
CURRENT_ROWS = """
SELECT {key} AS user_key, count(*) FILTER (WHERE is_current) AS current_rows
FROM silver.dim_user GROUP BY {key} HAVING count(*) FILTER (WHERE is_current) <> 1
"""


def violations(home: Home, sql: str, needs: tuple[str, ...], params: dict[str, Any] | None = None) -> tuple[int, list[dict]] | None:
    """``(count, first SAMPLE rows)`` of the rows ``sql`` (with ``params``) returns; ``None``
    if a table in ``needs`` does not exist yet."""
    lake = Lake.of(home)
    if not all(lake.exists(t) for t in needs):
        return None
    con = lake_sql.connect(lake)
    try:
        for table in needs:
            lake_sql.register(con, lake, table)
        count = con.sql(f"SELECT count(*) FROM ({sql})", params=params).fetchall()[0][0]
        sample = con.sql(f"{sql} LIMIT {SAMPLE}", params=params).to_arrow_table().to_pylist() if count else []
        return count, sample
    finally:
        con.close()


def check_result(found: tuple[int, list[dict]] | None, what: str, needs: tuple[str, ...],
                 window: Window | None = None) -> AssetCheckResult:
    """The check's result: passed with a ``skipped`` note while a table in ``needs`` is not
    built; else failed (severity ERROR) when ``found`` counts violations. A gate check says
    its ``window`` (``ds_start`` / ``ds_end``)."""
    if found is None:
        return AssetCheckResult(passed=True, metadata={"skipped": f"{', '.join(needs)} not built yet"})
    count, sample = found
    scope = {"ds_start": window[0].isoformat(), "ds_end": window[1].isoformat()} if window else {}
    return AssetCheckResult(
        passed=count == 0,
        severity=AssetCheckSeverity.ERROR,
        description=None if count == 0 else f"{count} {what}",
        metadata={"violations": count, "sample": [{k: str(v) for k, v in row.items()} for row in sample], **scope},
    )


def run_window(context: AssetCheckExecutionContext) -> Window | None:
    """The ``ds`` days the check's run builds (its partition or partition range), ``None`` in
    an unpartitioned run."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    keys = context.partition_key_range
    return dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)


# -- the gate: each takes the window (None: silver's built ds range) --------------------------
def complete_from_bronze(home: Home, window: Window | None) -> AssetCheckResult:
    """Bronze keys whose first copy lies in ``window`` and that silver lacks."""
    needs = ("silver.events", "bronze.events")
    first, last = window or (None, None)
    found = violations(home, quality.MISSING_FROM_SILVER, needs, {"first": first, "last": last})
    return check_result(found, "bronze events missing from silver.events", needs, window)


def complete_from_log(home: Home, window: Window | None) -> AssetCheckResult:
    """Events of ``window``'s days the stream consumed from the log and bronze lacks (only the
    log's retained records can be judged)."""
    needs = ("silver.events", "bronze.events")
    lake = Lake.of(home)
    window = window or lake.ds_range("silver.events")
    if window is None or not lake.exists("bronze.events"):
        return check_result(None, "", needs)
    log = open_log(home.settings.log_url)
    try:
        missing = quality.missing_from_log(lake, log, *window)
    finally:
        log.close()
    found = (missing.num_rows, missing.slice(0, SAMPLE).to_pylist())
    return check_result(found, "events the stream consumed from the log are missing from bronze.events", needs, window)


def bad_row_rate(home: Home, window: Window | None) -> AssetCheckResult:
    """The days of ``window`` whose bad-row rate exceeds ``quality.bad_row_rate_max``."""
    needs = ("silver.events", "bronze.events")
    lake = Lake.of(home)
    window = window or lake.ds_range("silver.events")
    if window is None or not lake.exists("bronze.events"):
        return check_result(None, "", needs)
    failed = [r for r in quality.bad_row_rates(lake, *window, home.settings.quality) if r.status == "fail"]
    sample = [{"ds": r.ds, "rate": r.observed, "message": r.message} for r in failed[:SAMPLE]]
    what = f"days over the bad-row rate of {home.settings.quality.bad_row_rate_max:g}"
    return check_result((len(failed), sample), what, needs, window)


GATE = {
    "complete_from_log": (complete_from_log, "every event of the run's days that the stream consumed from the log is in bronze.events"),
    "complete_from_bronze": (complete_from_bronze, "every bronze.events key whose first copy is in the run's days is in silver.events"),
    "bad_row_rate": (bad_row_rate, "no day of the run rejected more than quality.bad_row_rate_max of its rows (auth failures aside)"),
}


def gate_check(home: Home, name: str) -> AssetChecksDefinition:
    """The blocking asset check ``name`` of :data:`GATE` on ``silver/events``, over the run's window."""
    body, description = GATE[name]

    @asset_check(name=name, asset=asset_key("silver.events"), blocking=True, description=description)
    def gate(context) -> AssetCheckResult:  # unannotated: dagster checks the type at runtime
        return body(home, run_window(context))

    return gate


def user_key_column(model: Model) -> str:
    """The user key of ``silver.dim_user``: ``person_id`` if the schema has it, else ``user_id``."""
    names = model.schema.names
    return "person_id" if "person_id" in names else "user_id"


def invariant_checks(home: Home, models: tuple[Model, ...]) -> list[AssetChecksDefinition]:
    """The checks of the invariants (and the gate) whose asset is among ``models``."""
    by_table = {m.table: m for m in models}
    checks = []
    if "silver.events" in by_table:

        @asset_check(asset=asset_key("silver.events"), blocking=True, description="event_id is unique over all of silver.events")
        def event_id_unique() -> AssetCheckResult:
            needs = ("silver.events",)
            return check_result(violations(home, DUPLICATE_EVENT_IDS, needs), "event_ids occur more than once", needs)

        @asset_check(
            asset=asset_key("silver.events"),
            blocking=True,
            description="every silver.events row is a delivery in bronze.events (same event_id and received_at)",
        )
        def subset_of_bronze() -> AssetCheckResult:
            needs = ("silver.events", "bronze.events")
            return check_result(violations(home, NOT_IN_BRONZE, needs), "silver rows not found in bronze.events", needs)

        checks += [event_id_unique, subset_of_bronze, *(gate_check(home, name) for name in GATE)]
    if "silver.dim_user" in by_table:
        sql = CURRENT_ROWS.format(key=user_key_column(by_table["silver.dim_user"]))

        @asset_check(asset=asset_key("silver.dim_user"), description="SCD2: exactly one is_current row per user")
        def one_current_row_per_user() -> AssetCheckResult:
            needs = ("silver.dim_user",)
            return check_result(violations(home, sql, needs), "users without exactly one current row", needs)

        checks.append(one_current_row_per_user)
    return checks
