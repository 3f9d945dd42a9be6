"""Arrow schemas of every fixed-schema table: the tables' contracts, declared once.

:mod:`headwater.lake.catalog` names each table with its schema, partitioning, grain and
writer; the stages import their schemas from here. Timestamps are ``timestamp[us, UTC]``,
days ``date32`` (UTC calendar days); every partitioned table has ``ds`` last. User counts
are distinct ``person_id``. The canonical event and the bad row live in
:mod:`headwater.events` (every other event schema derives from them).
"""

from __future__ import annotations

import pyarrow as pa

from headwater.events import EVENT_SCHEMA, TS

# -- bronze side outputs and bookkeeping ------------------------------------------------
# bronze.late_events: the canonical event + the watermark that decided (as of the end of
# the previous batch) + which aggregates dropped it (headwater.stream.late).
LATE_SCHEMA = pa.schema([*EVENT_SCHEMA, pa.field("watermark", TS, nullable=False), pa.field("reason", pa.string(), nullable=False)])

# bronze.dead_letter: stored log units the log could not read as events of the topic's schema
# (headwater.log.base.DeadLetter; a unit is a SQLite append of one partition, a Kafka message).
DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),  # first offset of the unit
        pa.field("count", pa.int64(), nullable=False),  # offsets (events) the unit covers
        pa.field("error", pa.string(), nullable=False),
        pa.field("payload", pa.binary()),  # the unit's stored bytes, as they are
        pa.field("appended_at", TS, nullable=False),  # log append time
        pa.field("ds", pa.date32(), nullable=False),  # UTC date of appended_at
    ]
)

# bronze.bad_rows_replayed: bad rows re-submitted by `headwater badrows replay`.
REPLAYED_SCHEMA = pa.schema(
    [
        pa.field("bad_row_id", pa.string(), nullable=False),
        pa.field("replayed_at", TS, nullable=False),
        pa.field("events", pa.int64(), nullable=False),  # events appended to the log by the replay
        pa.field("ds", pa.date32(), nullable=False),  # UTC date of replayed_at
    ]
)

# bronze.cdc_<table>: Postgres logical-replication change records (headwater.sources.cdc).
CDC_SCHEMA = pa.schema(
    [
        pa.field("op", pa.string(), nullable=False),
        pa.field("lsn", pa.int64(), nullable=False),
        pa.field("commit_lsn", pa.int64(), nullable=False),
        pa.field("seq", pa.int32(), nullable=False),
        pa.field("xid", pa.int64(), nullable=False),
        pa.field("commit_ts", TS, nullable=False),
        pa.field("relation", pa.string(), nullable=False),
        pa.field("before", pa.string()),
        pa.field("after", pa.string()),
        pa.field("ds", pa.date32(), nullable=False),
    ]
)

# -- silver ------------------------------------------------------------------------------
IDENTITY_MAP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # an anonymous id or user id (token)
        pa.field("person_id", pa.string(), nullable=False),  # the person it resolves to
        pa.field("identified", pa.bool_(), nullable=False),  # id is the user_id of an identify
        pa.field("linked_by", pa.string(), nullable=False),  # root | identify | alias
        pa.field("linked_at", TS),  # event time of the link that attached it (null for a root)
        pa.field("link_event_id", pa.string()),  # event_id of that link
        # the earliest event time by which links (none later) join it to its person (null for a
        # root): events more than identity.stitch_lookback_days before it keep the id as person
        pa.field("stitched_at", TS),
    ]
)

# silver.identity_links: the identity graph's edges, kept so the map is updated from each
# day's identify / alias events instead of all of bronze (headwater.models.identity)
IDENTITY_LINKS_SCHEMA = pa.schema(
    [
        pa.field("a", pa.string(), nullable=False),  # anonymous_id (identify) / previousId (alias); = b: b is identified
        pa.field("b", pa.string(), nullable=False),  # the event's user_id
        pa.field("event_type", pa.string(), nullable=False),  # identify | alias
        pa.field("event_ts", TS, nullable=False),  # event time of the earliest such link
        pa.field("event_id", pa.string(), nullable=False),  # its event_id
    ]
)

IDENTITY_REFUSED_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),  # the identify / alias event
        pa.field("event_type", pa.string(), nullable=False),  # identify | alias
        pa.field("linked_at", TS, nullable=False),  # its event time
        pa.field("id", pa.string(), nullable=False),  # anonymous_id (identify) / previousId (alias)
        pa.field("user_id", pa.string(), nullable=False),  # the event's user_id
        pa.field("id_person_id", pa.string(), nullable=False),  # person the id stays with
        pa.field("user_person_id", pa.string(), nullable=False),  # person of user_id
        pa.field("reason", pa.string(), nullable=False),
    ]
)

# silver.events: the canonical event, deduplicated, plus the resolved person
SILVER_EVENTS_SCHEMA = pa.schema(
    [f for f in EVENT_SCHEMA if f.name != "ds"]
    + [pa.field("person_id", pa.string()), EVENT_SCHEMA.field("ds")]  # null only without any id
)

DIM_USER_SCHEMA = pa.schema(
    [
        pa.field("person_id", pa.string(), nullable=False),  # the user key (silver.identity_map)
        pa.field("version", pa.int64(), nullable=False),  # 1, 2, ... in valid_from order
        pa.field("valid_from", TS, nullable=False),  # event time of the identify opening it
        pa.field("valid_to", TS),  # valid_from of the next version; null for the current one
        pa.field("is_current", pa.bool_(), nullable=False),  # exactly one per person_id
        pa.field("user_id", pa.string(), nullable=False),  # user_id of the opening identify
        pa.field("traits", pa.string(), nullable=False),  # JSON object: tracked traits in effect
    ]
)

ACTIVE_USERS_SCHEMA = pa.schema(
    [
        pa.field("ds", pa.date32(), nullable=False),  # calendar day (UTC), end of the windows
        pa.field("dau", pa.int64(), nullable=False),  # distinct persons active on ds
        pa.field("wau", pa.int64(), nullable=False),  # distinct persons active in [ds-6, ds]
        pa.field("mau", pa.int64(), nullable=False),  # distinct persons active in [ds-27, ds]
        pa.field("stickiness", pa.float64()),  # dau / mau; null when mau = 0
    ]
)

ACTIVE_USERS_BY_PLATFORM_SCHEMA = pa.schema(
    [ACTIVE_USERS_SCHEMA.field("ds"), pa.field("platform", pa.string(), nullable=False)]
    + [f for f in ACTIVE_USERS_SCHEMA if f.name != "ds"]
)

# gold.active_users_monthly: calendar-month actives, month to date, per platform
ACTIVE_USERS_MONTHLY_SCHEMA = pa.schema(
    [
        pa.field("month", pa.date32(), nullable=False),  # first day of ds's calendar month
        pa.field("platform", pa.string(), nullable=False),
        pa.field("active_users", pa.int64(), nullable=False),  # distinct persons active in [month, ds]
        pa.field("ds", pa.date32(), nullable=False),  # the month's last day: its calendar-month actives
    ]
)

SESSIONS_SCHEMA = pa.schema(
    [
        pa.field("session_id", pa.string(), nullable=False),  # person_id:start (µs since epoch)
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("session_start", TS, nullable=False),  # event time of the first event
        pa.field("session_end", TS, nullable=False),  # event time of the last event
        pa.field("duration_seconds", pa.float64(), nullable=False),  # end - start
        pa.field("events", pa.int64(), nullable=False),
        pa.field("entry_event", pa.string(), nullable=False),  # event_name (else event_type) of the first event
        pa.field("exit_event", pa.string(), nullable=False),  # ... of the last event
        pa.field("platform", pa.string(), nullable=False),  # platform of the first event
        pa.field("ds", pa.date32(), nullable=False),  # UTC day of session_start
    ]
)

# gold.sessions_daily: gold.sessions per ds x platform (what /api/metrics/sessions serves)
SESSIONS_DAILY_SCHEMA = pa.schema(
    [
        pa.field("platform", pa.string(), nullable=False),  # the sessions' entry platform
        pa.field("sessions", pa.int64(), nullable=False),
        pa.field("median_duration_s", pa.float64(), nullable=False),  # exact median over the sessions, seconds
        pa.field("bounce_rate", pa.float64(), nullable=False),  # share of one-event sessions
        pa.field("persons", pa.int64(), nullable=False),  # distinct person_id
        pa.field("ds", pa.date32(), nullable=False),  # UTC day of the sessions' start
    ]
)

EVENTS_HOURLY_SCHEMA = pa.schema(
    [
        pa.field("hour", TS, nullable=False),  # start of the UTC hour (event time)
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("event_name", pa.string()),  # null for identify / alias / group
        pa.field("platform", pa.string(), nullable=False),
        pa.field("events", pa.int64(), nullable=False),
        pa.field("persons", pa.int64(), nullable=False),  # distinct person_id in the hour
        pa.field("ds", pa.date32(), nullable=False),
    ]
)

RETENTION_SCHEMA = pa.schema(
    [
        pa.field("ds", pa.date32(), nullable=False),  # the cohort's last day: cohort_start (day), the Sunday (week), the month's last day
        pa.field("cohort_start", pa.date32(), nullable=False),  # first-active day, its ISO week's Monday, or its month's first day
        pa.field("cohort_grain", pa.string(), nullable=False),  # day | week | month
        pa.field("period", pa.int32(), nullable=False),  # n = 0..30 days / k = 0..12 weeks / m = 0..12 months after
        pa.field("cohort_size", pa.int64(), nullable=False),  # persons first active in the cohort
        pa.field("active_users", pa.int64(), nullable=False),  # of them, active in the period
        pa.field("retention", pa.float64(), nullable=False),  # active_users / cohort_size
    ]
)

FUNNELS_SCHEMA = pa.schema(
    [
        pa.field("ds", pa.date32(), nullable=False),  # UTC day of the entry (first-step) event
        pa.field("funnel", pa.string(), nullable=False),
        pa.field("platform", pa.string(), nullable=False),  # platform of the entry event
        pa.field("step", pa.int32(), nullable=False),  # 1-based
        pa.field("step_name", pa.string(), nullable=False),  # the step's event name
        pa.field("entered", pa.int64(), nullable=False),  # persons entering (step 1)
        pa.field("users", pa.int64(), nullable=False),  # persons reaching this step in order, in the window
        pa.field("conversion", pa.float64(), nullable=False),  # users / entered
        # median over the step's users of the seconds from the entry to the step (null: step 1, no users)
        pa.field("median_seconds_to_convert", pa.float64()),
    ]
)

EXPERIMENTS_SCHEMA = pa.schema(
    [
        pa.field("ds", pa.date32(), nullable=False),  # results as of the end of this day (cumulative)
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("is_control", pa.bool_(), nullable=False),
        pa.field("exposed", pa.int64(), nullable=False),  # persons whose first exposure was to this variant
        pa.field("converters", pa.int64(), nullable=False),  # of them, converted at or after exposure
        pa.field("conversion_rate", pa.float64()),  # converters / exposed
        pa.field("lift_abs", pa.float64()),  # rate - control rate (null for the control)
        pa.field("lift_abs_ci_low", pa.float64()),  # 95 % CI (Wald, unpooled)
        pa.field("lift_abs_ci_high", pa.float64()),
        pa.field("lift_rel", pa.float64()),  # rate / control rate - 1
        pa.field("lift_rel_ci_low", pa.float64()),  # 95 % CI (delta method)
        pa.field("lift_rel_ci_high", pa.float64()),
        pa.field("z", pa.float64()),  # two-proportion z statistic (pooled)
        pa.field("p_value", pa.float64()),  # two-sided
        pa.field("expected_share", pa.float64(), nullable=False),  # configured traffic share
        pa.field("srm_chi2", pa.float64()),  # sample-ratio-mismatch chi-square (per experiment)
        pa.field("srm_p_value", pa.float64()),
        pa.field("srm", pa.bool_()),  # srm_p_value < 0.001: the split is not as configured
    ]
)

# -- cumulative state: partition ds holds the state as of the end of ds (headwater.models.dag) --
# Bitmaps are BIGINT with bit i set for day / week / month i: both engines shift and mask
# 64-bit integers the same way, and 32 bits are used at most (no sign bit involved).

# silver.person_state: one row per person seen by ds (every person ever, so a daily build
# knows who is new without reading history)
PERSON_STATE_SCHEMA = pa.schema(
    [
        pa.field("person_id", pa.string(), nullable=False),  # identity-resolved (silver.events)
        pa.field("first_ds", pa.date32(), nullable=False),  # first day with an event
        pa.field("last_ds", pa.date32(), nullable=False),  # last day with an event, up to ds
        pa.field("cohort_ds", pa.date32()),  # retention cohort: first day with a start event (null: none yet)
        pa.field("day_bits", pa.int64(), nullable=False),  # bit n: a return event on cohort_ds + n (n = 0..30)
        pa.field("week_bits", pa.int64(), nullable=False),  # bit k: in the k-th ISO week after the cohort's (0..12)
        pa.field("month_bits", pa.int64(), nullable=False),  # bit m: in the m-th calendar month after (0..12)
        pa.field("ds", pa.date32(), nullable=False),
    ]
)

# silver.person_platform_state: one row per person and platform active in the 32 days to ds
PERSON_PLATFORM_STATE_SCHEMA = pa.schema(
    [
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("platform", pa.string(), nullable=False),
        pa.field("active_days", pa.int64(), nullable=False),  # bit i: an event on ds - i (i = 0..31), never 0
        pa.field("ds", pa.date32(), nullable=False),
    ]
)

# silver.experiment_state: one row per configured experiment and person exposed by ds
EXPERIMENT_STATE_SCHEMA = pa.schema(
    [
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),  # of the first exposure (event time, then event_id)
        pa.field("exposed_at", TS, nullable=False),  # the first exposure's event time
        pa.field("converted_at", TS),  # first conversion_event at or after exposed_at, by ds (null: none)
        pa.field("ds", pa.date32(), nullable=False),
    ]
)

# silver.exposure_state: one row per configured experiment, variant and person exposed by ds
# (cumulative state as of ds): what silver.conversions and silver.dim_experiment read
EXPOSURE_STATE_SCHEMA = pa.schema(
    [
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("first_exposed_at", TS, nullable=False),  # the person's first exposure to the variant (event time)
        pa.field("last_exposed_at", TS, nullable=False),  # the latest (event time, then event_id)
        pa.field("last_event_id", pa.string(), nullable=False),  # its event_id
        pa.field("ds", pa.date32(), nullable=False),
    ]
)

# -- the modeled layer: conversions fact, device and experiment dimensions ----------------
REVENUE = pa.decimal128(38, 9)  # exact money: DECIMAL(38, 9) on DuckDB and Spark

# silver.exposures: the exposures of configured experiments to configured variants
EXPOSURES_SCHEMA = pa.schema(
    [
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),  # properties.variation_id, one of the configured variants
        pa.field("person_id", pa.string(), nullable=False),  # identity-resolved (silver.events)
        pa.field("source", pa.string(), nullable=False),  # the exposure event's key (source, event_id)
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_ts", TS, nullable=False),
        pa.field("ds", pa.date32(), nullable=False),  # UTC day of event_ts
    ]
)

# silver.conversions: the conversion events with person, revenue and variants (no session)
SILVER_CONVERSIONS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),  # the conversion event ((source, event_id) is its key)
        pa.field("source", pa.string(), nullable=False),
        pa.field("event_name", pa.string(), nullable=False),  # one of the configured conversion events
        pa.field("event_ts", TS, nullable=False),
        pa.field("person_id", pa.string(), nullable=False),  # identity-resolved (silver.events)
        pa.field("platform", pa.string(), nullable=False),
        pa.field("revenue", REVENUE),  # the configured revenue property; null if absent or not a number
        pa.field("experiment_variants", pa.string(), nullable=False),  # JSON {experiment_id: variant}, latest exposure at or before
        pa.field("ds", pa.date32(), nullable=False),  # UTC day of event_ts
    ]
)

# gold.conversions: the fact, silver.conversions with the session of each conversion
CONVERSIONS_SCHEMA = SILVER_CONVERSIONS_SCHEMA.insert(
    SILVER_CONVERSIONS_SCHEMA.get_field_index("person_id") + 1,
    pa.field("session_id", pa.string()),  # the gold.sessions session holding the event
)

# gold.revenue: per ds x platform, the exact revenue of gold.conversions and revenue per active user
REVENUE_SCHEMA = pa.schema(
    [
        pa.field("platform", pa.string(), nullable=False),
        pa.field("revenue", REVENUE, nullable=False),  # exact sum of the conversions' revenue (0 without any)
        pa.field("conversions", pa.int64(), nullable=False),  # conversion events, with or without revenue
        pa.field("paying_persons", pa.int64(), nullable=False),  # distinct persons with a conversion of revenue > 0
        pa.field("active_users", pa.int64(), nullable=False),  # DAU of the platform (gold.active_users_by_platform)
        pa.field("revenue_per_active_user", pa.float64()),  # revenue / active_users; null when active_users = 0
        pa.field("ds", pa.date32(), nullable=False),  # UTC day of the conversions
    ]
)

DIM_DEVICE_SCHEMA = pa.schema(
    [
        pa.field("anonymous_id", pa.string(), nullable=False),  # the device key (SDK install / browser storage id)
        pa.field("person_id", pa.string(), nullable=False),  # person of the device's latest event
        pa.field("platform", pa.string(), nullable=False),  # platform of the latest event
        pa.field("device_type", pa.string()),  # latest non-null value of each attribute (SCD1)
        pa.field("device_model", pa.string()),
        pa.field("os_name", pa.string()),
        pa.field("os_version", pa.string()),
        pa.field("app_version", pa.string()),
        pa.field("first_seen_at", TS, nullable=False),  # event time of the device's first event
        pa.field("last_seen_at", TS, nullable=False),  # ... of its latest event
    ]
)

DIM_EXPERIMENT_SCHEMA = pa.schema(
    [
        pa.field("experiment_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("is_control", pa.bool_(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),  # configured traffic share (sums to 1 per experiment)
        pa.field("control", pa.string(), nullable=False),
        pa.field("conversion_event", pa.string(), nullable=False),
        pa.field("exposure_event", pa.string(), nullable=False),
        pa.field("exposed", pa.int64(), nullable=False),  # distinct persons with an exposure to this variant
        pa.field("first_exposure_at", TS),  # event time of the variant's first / last exposure (null: none yet)
        pa.field("last_exposure_at", TS),
        pa.field("experiment_first_exposure_at", TS),  # ... of the experiment's, any variant
        pa.field("experiment_last_exposure_at", TS),
    ]
)

# quality.results: one row per check outcome, appended by every run of the checks
# (headwater.quality). ``subject``: what was measured (an event name, a funnel step
# "a -> b", a realtime table); ``observed`` / ``expected``: the figure and the rule it met
# or broke; ``blocking``: a failure stops the day's gold partitions from being published.
QUALITY_RESULTS_SCHEMA = pa.schema(
    [
        pa.field("check_name", pa.string(), nullable=False),  # freshness_realtime, completeness_bronze, volume, ...
        pa.field("table", pa.string(), nullable=False),  # the table judged
        pa.field("subject", pa.string()),
        pa.field("ds", pa.date32()),  # the day judged (null: a check of "now", e.g. realtime freshness)
        pa.field("hour", TS),  # the hour judged (completeness), else null
        pa.field("status", pa.string(), nullable=False),  # pass | warn | fail
        pa.field("blocking", pa.bool_(), nullable=False),
        pa.field("observed", pa.float64()),
        pa.field("expected", pa.string()),
        pa.field("message", pa.string(), nullable=False),
        pa.field("checked_at", TS, nullable=False),  # when the run of the checks started
    ]
)
