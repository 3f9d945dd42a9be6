"""Asset checks for the batch layer's invariants, run after every materialisation of their asset.

* ``silver/events: event_id_unique`` — silver holds each ``event_id`` once over the whole
  table (a re-send's copy can sit in another ``ds`` partition, so the check is not per day);
* ``silver/events: subset_of_bronze`` — every silver row is one delivery of bronze: its
  ``(event_id, received_at)`` exists in ``bronze.events`` (nothing invented, nothing kept
  after bronze lost it);
* ``silver/events: complete_from_bronze`` — the converse: every bronze event key whose first
  copy lies in silver's built ``ds`` range is in silver (nothing lost;
  :data:`headwater.quality.checks.MISSING_FROM_SILVER`);
* ``silver/dim_user: one_current_row_per_user`` — SCD2: each user key has exactly one row
  with ``is_current``. Defined only when a model builds ``silver.dim_user``; passes with a
  note while that table does not exist yet.

The first three are *blocking*: in a run that also builds gold, a failed check stops the gold
steps, so gold is never computed from a silver that breaks them. Each failure carries the
count and up to :data:`SAMPLE` offending keys as metadata. All are plain DuckDB
queries over the SQL catalog (:mod:`headwater.lake.sql`).
"""

from __future__ import annotations

from dagster import AssetCheckResult, AssetChecksDefinition, AssetCheckSeverity, asset_check

from headwater.config import Home
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models.dag import Model
from headwater.orchestrate.assets import asset_key
from headwater.quality.checks import MISSING_FROM_SILVER

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


def violations(home: Home, sql: str, needs: tuple[str, ...]) -> tuple[int, list[dict]] | None:
    """``(count, first SAMPLE rows)`` of the rows ``sql`` returns; ``None`` if a table in
    ``needs`` does not exist yet."""
    lake = Lake.of(home)
    if not all(lake.exists(t) for t in needs):
        return None
    con = lake_sql.connect(lake)
    try:
        for table in needs:
            lake_sql.register(con, lake, table)
        count = con.sql(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
        sample = con.sql(f"{sql} LIMIT {SAMPLE}").to_arrow_table().to_pylist() if count else []
        return count, sample
    finally:
        con.close()


def check_result(found: tuple[int, list[dict]] | None, what: str, needs: tuple[str, ...]) -> AssetCheckResult:
    if found is None:
        return AssetCheckResult(passed=True, metadata={"skipped": f"{', '.join(needs)} not built yet"})
    count, sample = found
    return AssetCheckResult(
        passed=count == 0,
        severity=AssetCheckSeverity.ERROR,
        description=None if count == 0 else f"{count} {what}",
        metadata={"violations": count, "sample": [{k: str(v) for k, v in row.items()} for row in sample]},
    )


def user_key_column(model: Model) -> str:
    """The user key of ``silver.dim_user``: ``person_id`` if the schema has it, else ``user_id``."""
    names = model.schema.names
    return "person_id" if "person_id" in names else "user_id"


def invariant_checks(home: Home, models: tuple[Model, ...]) -> list[AssetChecksDefinition]:
    """The checks of the invariants whose asset is among ``models``."""
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

        @asset_check(
            asset=asset_key("silver.events"),
            blocking=True,
            description="every bronze.events key whose first copy is in silver's ds range is in silver.events",
        )
        def complete_from_bronze() -> AssetCheckResult:
            needs = ("silver.events", "bronze.events")
            return check_result(violations(home, MISSING_FROM_SILVER, needs), "bronze events missing from silver.events", needs)

        checks += [event_id_unique, subset_of_bronze, complete_from_bronze]
    if "silver.dim_user" in by_table:
        sql = CURRENT_ROWS.format(key=user_key_column(by_table["silver.dim_user"]))

        @asset_check(asset=asset_key("silver.dim_user"), description="SCD2: exactly one is_current row per user")
        def one_current_row_per_user() -> AssetCheckResult:
            needs = ("silver.dim_user",)
            return check_result(violations(home, sql, needs), "users without exactly one current row", needs)

        checks.append(one_current_row_per_user)
    return checks
