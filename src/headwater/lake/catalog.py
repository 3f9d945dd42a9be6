"""The table catalog: every table of the lake, declared once.

Each :class:`TableSpec` gives a table's name ``layer.table``, its Arrow schema, partition
columns, grain, the stage that writes it and a one-line description. Three *families* are
declared by a name pattern, because their members appear at run time: the typed table of
each registered event name (``silver.evt_<name>``), the change records and the SCD2
dimension of each Postgres CDC source (``bronze.cdc_<table>``, ``silver.dim_<name>``), and
the window aggregate of each stream pipeline (``realtime.<name>``). Their schemas are
derived from the contract, the captured table or the pipeline.

This module is the only one that knows which tables exist; :mod:`headwater.lake.store`
is the only one that knows where and how they are stored. Nothing else builds a table path.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from headwater.errors import InvalidInputError, NotFoundError
from headwater.events import BAD_ROW_SCHEMA, EVENT_SCHEMA
from headwater.lake import schemas as s

LAYERS = ("bronze", "silver", "gold", "realtime", "quality")
Writer = Literal["collector", "stream", "batch", "cdc", "badrows", "quality"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TableSpec:
    """One table (or, with a ``*`` in ``name``, a family of tables).

    ``schema``: the exact Arrow schema written (``None`` for a family whose members derive
    theirs); ``partition_by``: Delta partition columns (``()``: unpartitioned);
    ``grain``: what one row is; ``writer``: the stage that writes it; ``empty_until_written``:
    reads as an empty table of ``schema`` before its first commit (a side output where "no
    rows" is an answer, not an error)."""

    name: str
    schema: pa.Schema | None
    partition_by: tuple[str, ...]
    grain: str
    writer: Writer
    description: str
    empty_until_written: bool = False

    @property
    def layer(self) -> str:
        return self.name.partition(".")[0]

    @property
    def is_family(self) -> bool:
        return "*" in self.name

    def matches(self, table: str) -> bool:
        return fnmatch.fnmatchcase(table, self.name) if self.is_family else table == self.name


TABLES: tuple[TableSpec, ...] = (
    # -- bronze: what arrived, as it arrived ------------------------------------------------
    TableSpec("bronze.events", EVENT_SCHEMA, ("ds",), "one row per accepted event (duplicates within the dedup TTL removed)",
              "stream", "Every accepted event, exactly once, in canonical form."),
    TableSpec("bronze.bad_rows", BAD_ROW_SCHEMA, ("ds",), "one row per rejected event, or per rejected request",
              "stream", "Events the collector or a source rejected, with the field and rule they broke.",
              empty_until_written=True),
    TableSpec("bronze.dead_letter", s.DEAD_LETTER_SCHEMA, ("ds",), "one row per unreadable stored log unit",
              "stream", "Log units (appends, messages) the stream could not read as events, with partition, offset and error.",
              empty_until_written=True),
    TableSpec("bronze.late_events", s.LATE_SCHEMA, ("ds",), "one row per event behind the watermark of some aggregate",
              "stream", "Events too late for a real-time window (they are in bronze.events too).",
              empty_until_written=True),
    TableSpec("bronze.bad_rows_replayed", s.REPLAYED_SCHEMA, ("ds",), "one row per replayed bad row",
              "badrows", "Bad rows re-submitted by `headwater badrows replay`, and the events each yielded."),
    TableSpec("bronze.cdc_*", s.CDC_SCHEMA, ("ds",), "one row per captured change (insert, update, delete, truncate, snapshot row)",
              "cdc", "Postgres logical-replication change records of one captured table."),
    # -- silver: conformed, deduplicated, identity-resolved --------------------------------
    TableSpec("silver.identity_map", s.IDENTITY_MAP_SCHEMA, (), "one row per identifier (anonymous id or user id)",
              "batch", "Identifier -> person_id, from identify and alias links (union-find)."),
    TableSpec("silver.identity_links", s.IDENTITY_LINKS_SCHEMA, (), "one row per linked id pair (earliest link), and per identified user id (a = b)",
              "batch", "identify / alias links between identifiers: the edges of the identity graph, updated day by day.",
              empty_until_written=True),
    TableSpec("silver.identity_refused", s.IDENTITY_REFUSED_SCHEMA, (), "one row per refused identity link",
              "batch", "identify / alias links refused because they would merge two identified users."),
    TableSpec("silver.events", s.SILVER_EVENTS_SCHEMA, ("ds",), "one row per (source, event_id) (earliest received_at)",
              "batch", "Events deduplicated (copies within 3 days of event time), with the resolved person_id."),
    TableSpec("silver.dim_user", s.DIM_USER_SCHEMA, (), "one row per person_id and version (SCD2)",
              "batch", "User traits over time from identify calls (SCD type 2)."),
    TableSpec("silver.dim_device", s.DIM_DEVICE_SCHEMA, (), "one row per anonymous_id (device) (SCD1)",
              "batch", "Device, OS and app version from the event context: SCD type 1, the latest value of each "
              "attribute (each event keeps the values it was sent with, so history is on the facts)."),
    TableSpec("silver.dim_experiment", s.DIM_EXPERIMENT_SCHEMA, (), "one row per experiment x variant",
              "batch", "Configured experiments (variants, weights, control, conversion event) with exposures seen."),
    TableSpec("silver.exposures", s.EXPOSURES_SCHEMA, ("ds",), "one row per exposure event (source, event_id)",
              "batch", "Exposures of configured experiments to configured variants, with the resolved person_id."),
    TableSpec("silver.conversions", s.SILVER_CONVERSIONS_SCHEMA, ("ds",), "one row per conversion event (source, event_id)",
              "batch", "Conversion events with person, exact revenue and the experiment variants at that moment."),
    TableSpec("silver.person_state", s.PERSON_STATE_SCHEMA, ("ds",), "one row per person seen by ds (state as of ds)",
              "batch", "Per person: first and last active day, retention cohort and the periods active in it (cumulative).",
              empty_until_written=True),
    TableSpec("silver.person_platform_state", s.PERSON_PLATFORM_STATE_SCHEMA, ("ds",),
              "one row per person x platform active in the 32 days to ds (state as of ds)",
              "batch", "Per person and platform: a 32-day activity bitmap (cumulative).", empty_until_written=True),
    TableSpec("silver.exposure_state", s.EXPOSURE_STATE_SCHEMA, ("ds",),
              "one row per experiment x variant x person exposed by ds (state as of ds)",
              "batch", "Per experiment, variant and person: first and latest exposure (cumulative).",
              empty_until_written=True),
    TableSpec("silver.experiment_state", s.EXPERIMENT_STATE_SCHEMA, ("ds",),
              "one row per experiment x person exposed by ds (state as of ds)",
              "batch", "Per experiment and person: first exposure's variant and time, first conversion after it (cumulative).",
              empty_until_written=True),
    TableSpec("silver.evt_*", None, ("ds",), "one row per event of one registered name",
              "batch", "Typed table of one registered event name: one column per contract property."),
    TableSpec("silver.dim_*", None, (), "one row per key and version (SCD2)",
              "batch", "SCD type 2 dimension of a Postgres CDC source."),
    # -- gold: metrics ----------------------------------------------------------------------
    TableSpec("gold.events_hourly", s.EVENTS_HOURLY_SCHEMA, ("ds",), "hour x event_type x event_name x platform",
              "batch", "Event and person counts per hour."),
    TableSpec("gold.sessions", s.SESSIONS_SCHEMA, ("ds",), "one row per session (30-min inactivity gap, event time)",
              "batch", "Sessions with length, entry and exit events."),
    TableSpec("gold.sessions_daily", s.SESSIONS_DAILY_SCHEMA, ("ds",), "ds x platform",
              "batch", "Sessions per day and entry platform: count, exact median length, bounce rate, persons."),
    TableSpec("gold.active_users", s.ACTIVE_USERS_SCHEMA, ("ds",), "one row per ds",
              "batch", "DAU / WAU / MAU (trailing 1 / 7 / 28 days) and stickiness."),
    TableSpec("gold.active_users_by_platform", s.ACTIVE_USERS_BY_PLATFORM_SCHEMA, ("ds",), "ds x platform",
              "batch", "DAU / WAU / MAU and stickiness per platform."),
    TableSpec("gold.active_users_monthly", s.ACTIVE_USERS_MONTHLY_SCHEMA, ("ds",), "ds x platform (month to date)",
              "batch", "Calendar-month actives per platform, month to date (the month's last day: the whole month)."),
    TableSpec("gold.retention", s.RETENTION_SCHEMA, ("ds",), "cohort_grain x cohort_start x period",
              "batch", "Day (n = 0..30), week (k = 0..12) and calendar-month (m = 0..12) retention cohorts."),
    TableSpec("gold.funnels", s.FUNNELS_SCHEMA, ("ds",), "ds x funnel x platform x step",
              "batch", "Configured funnels: persons per step, strict order within the window, median time to convert."),
    TableSpec("gold.experiments", s.EXPERIMENTS_SCHEMA, ("ds",), "ds x experiment x variant (cumulative)",
              "batch", "Exposure, conversion, lift with 95 % CI, p-value and SRM per variant."),
    TableSpec("gold.conversions", s.CONVERSIONS_SCHEMA, ("ds",), "one row per conversion event (source, event_id)",
              "batch", "The conversions fact: silver.conversions with the session each conversion happened in."),
    TableSpec("gold.revenue", s.REVENUE_SCHEMA, ("ds",), "ds x platform",
              "batch", "Exact revenue, conversions, paying persons and revenue per active user."),
    # -- realtime: the stream's window aggregates -------------------------------------------
    TableSpec("realtime.*", None, (), "one row per window x group (see the pipeline)",
              "stream", "Seconds-fresh window aggregates of the stream pipeline."),
    # -- quality: the data-quality checks' outcomes ------------------------------------------
    TableSpec("quality.results", s.QUALITY_RESULTS_SCHEMA, (), "one row per check x subject x ds/hour per run",
              "quality", "Outcomes of the data-quality checks (freshness, completeness, anomalies, bad rows, drift)."),
)


def check_name(table: str) -> tuple[str, str]:
    """``(layer, name)`` of ``"layer.name"``; :class:`InvalidInputError` unless both parts are
    SQL identifiers."""
    layer, _, name = table.partition(".")
    if not (_IDENT.match(layer) and _IDENT.match(name)):
        raise InvalidInputError(f"table: expected '<layer>.<name>' (SQL identifiers), got {table!r}", field="table")
    return layer, name


def spec(table: str) -> TableSpec:
    """The declaration of ``table`` (an exact entry before a family). :class:`NotFoundError`
    if the catalog declares no such table."""
    check_name(table)
    exact = [t for t in TABLES if not t.is_family and t.name == table]
    if exact:
        return exact[0]
    for t in TABLES:
        if t.is_family and t.matches(table):
            return t
    raise NotFoundError(f"table {table!r} is not declared in the catalog (headwater tables lists them)", field="table")


def declared(table: str) -> bool:
    """Whether the catalog declares ``table`` (exactly or through a family)."""
    try:
        spec(table)
    except (NotFoundError, InvalidInputError):
        return False
    return True
