"""What a daily build must restate besides its own day, found without reading all history.

A build of day N runs every model on N; three things can make days built before wrong, and
:func:`headwater.models.run.build` restates those days (silver on them, the cumulative
states and gold forward from the first):

* rows landed in ``bronze.events`` for a day built before (late data, an import):
  :func:`headwater.models.dag.added_days` since the build's cursor, the ``bronze.events``
  version the last completed build saw;
* a neighbouring day received a copy of one of a day's events: silver's dedup compares
  copies within :data:`headwater.models.config.DEDUP_DAYS` days (``silver/events.sql``), so
  the day's winner may change — :func:`dedup_neighbor_days`;
* the identity map now gives some silver rows another person (a late ``identify``
  stitching anonymous days): :func:`remapped_days`.

Identity stitching, the design choice. Segment, Amplitude and PostHog keep the raw ids on
the events and a person-id mapping table applied when a query runs (PostHog's
``person_overrides``, squashed into the events later); that keeps history untouched but
every reader must join the mapping, and pre-aggregated tables (DAU, retention, sessions,
funnels per past day) would still be wrong for the days a merge touches. Here gold must
equal a full rebuild, so the stored ``person_id`` is restated instead (Snowplow's
``stitched_user_id`` update), but only on the days holding rows of the ids whose person
changed: the map is diffed against the one the stored silver was built with (kept next to
the cursor, with the ``silver.identity_map`` version it was read at), and the days are looked
up in ``silver.person_state`` (each old person's first and last active day) before a scan of
just those days; those days' silver rows are then rewritten from themselves with the new
person (:func:`headwater.models.run.restitch`: no bronze read, no dedup), and the states and
gold that read them are restated. When the stored map cannot be trusted — missing, or the
map table moved since it was saved (a killed build, a run outside
:func:`headwater.models.run.build`) — the full content check
:func:`headwater.models.run.identity_stale_days` is used instead. Day N's cost therefore
grows only with the days the changed persons were active on: zero when no anonymous history
is stitched, and the restatement itself (silver, sessions and funnels on those days, the
states and what reads them forward from the first) when it is: a pre-aggregated past day
cannot be corrected for a merged person without recomputing it.

The checkpoint files live in ``<home>/checkpoints/batch/`` and are written after a build
completes (atomically: a temporary file renamed), so a killed build is detected again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.models.config import DEDUP_DAYS, ModelConfig, render

_VERSION_KEY = b"headwater.identity_map_version"
_LOOKBACK_KEY = b"headwater.stitch_lookback_days"


def _dir(home: Home) -> Path:
    return home.checkpoint_dir("batch")


def _replace(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)


@dataclass(frozen=True)
class Baseline:
    """What the stored tables were last built from, as saved by the last completed build:
    ``bronze_version`` (``None``: never) and ``identity_map`` (``id``, ``person_id``,
    ``stitched_at``: the map silver holds; ``None`` if unknown) read at version ``map_version``
    of ``silver.identity_map`` and applied with ``stitch_lookback_days``."""

    bronze_version: int | None
    identity_map: pa.Table | None
    map_version: int | None
    stitch_lookback_days: int | None = None

    def trusted_map(self, map_version: int | None, stitch_lookback_days: int) -> pa.Table | None:
        """The saved map if silver still holds it — the map table is at the version it was read
        at, and the person rule's lookback is the same — else ``None`` (check every day)."""
        same = self.map_version == map_version and self.stitch_lookback_days == stitch_lookback_days
        return self.identity_map if same else None


def load_baseline(home: Home) -> Baseline:
    """The :class:`Baseline` the last completed build of ``home`` saved (all ``None`` if none)."""
    cursor, stored = _dir(home) / "bronze_version", _dir(home) / "identity_map.parquet"
    version = int(cursor.read_text()) if cursor.is_file() else None
    if not stored.is_file():
        return Baseline(version, None, None)
    table = pq.read_table(stored)
    meta = table.schema.metadata or {}
    if _LOOKBACK_KEY not in meta:  # saved before the lookback existed: unknown
        return Baseline(version, None, None)
    return Baseline(version, table, int(meta.get(_VERSION_KEY, b"-1")), int(meta[_LOOKBACK_KEY]))


def save_baseline(home: Home, lake: Lake, con: duckdb.DuckDBPyConnection, bronze_version: int,
                  stitch_lookback_days: int) -> None:
    """Record ``bronze_version`` and the current ``silver.identity_map`` (read through ``con``,
    which holds it at its latest commit), applied with ``stitch_lookback_days``, as what the
    stored tables are now built from."""
    if lake.exists("silver.identity_map"):
        map_version = lake.version("silver.identity_map")
        table = con.sql("SELECT id, person_id, stitched_at FROM silver.identity_map").to_arrow_table()
        table = table.replace_schema_metadata({_VERSION_KEY: str(map_version).encode(),
                                               _LOOKBACK_KEY: str(stitch_lookback_days).encode()})
        _replace(_dir(home) / "identity_map.parquet", lambda p: pq.write_table(table, p))
    _replace(_dir(home) / "bronze_version", lambda p: p.write_text(str(bronze_version)))


def dedup_neighbor_days(con: duckdb.DuckDBPyConnection, days: list[dt.date]) -> list[dt.date]:
    """The ``ds`` of ``bronze.events`` (held by ``con``) not in ``days`` but within
    :data:`DEDUP_DAYS` of one of them holding a copy — same ``(source, event_id)`` — of a row
    on it: silver days whose dedup winner a change of ``days`` may move. Reads the key
    columns of the days around each run of ``days`` only."""
    found: set[dt.date] = set()
    wanted = sorted(set(days))
    runs: list[list[dt.date]] = []
    for d in wanted:  # runs of days close enough that their windows overlap
        if runs and (d - runs[-1][-1]).days <= 2 * DEDUP_DAYS + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    for run in runs:
        listed = ", ".join(f"DATE '{d.isoformat()}'" for d in run)
        rows = con.execute(
            f"""
            WITH keys AS (
                SELECT source, event_id, ds FROM bronze.events
                WHERE ds BETWEEN CAST($lo AS DATE) - {DEDUP_DAYS} AND CAST($hi AS DATE) + {DEDUP_DAYS}
            )
            SELECT DISTINCT o.ds
            FROM keys AS o
            JOIN keys AS k ON k.source = o.source AND k.event_id = o.event_id
            WHERE k.ds IN ({listed}) AND o.ds NOT IN ({listed})
              AND o.ds BETWEEN k.ds - {DEDUP_DAYS} AND k.ds + {DEDUP_DAYS}
            """,
            {"lo": run[0], "hi": run[-1]},
        ).fetchall()
        found.update(r[0] for r in rows)
    return sorted(found - set(wanted))


def remapped_days(con: duckdb.DuckDBPyConnection, baseline: pa.Table, state_ds: dt.date | None,
                  config: ModelConfig) -> list[dt.date]:
    """The ``ds`` of ``silver.events`` holding a row whose stored ``person_id`` differs from
    what the current ``silver.identity_map`` gives under ``config``'s person rule, given that
    silver was consistent with ``baseline`` (``id``, ``person_id``, ``stitched_at``) under the
    same rule for every day not rebuilt since. ``con`` holds ``silver.identity_map``,
    ``silver.events`` and ``silver.person_state``, whose latest partition is ``state_ds``
    (``None``: it has none). Sorted.

    Only the ids whose map row (person, stitched_at) differs between the two maps can have
    such rows; they lie on the days their old person (or the id itself, its person before
    the lookback) was active, which ``silver.person_state``'s latest partition bounds (first
    and last active day; it holds every person silver holds, as of its last day), and not
    before the lookback of the earlier of the two ``stitched_at`` (a row older than both
    keeps the id as its person under either map): only those days of silver are scanned."""
    con.register("_hw_baseline", baseline)
    try:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _hw_changed AS
            SELECT coalesce(n.id, o.id) AS id, coalesce(o.person_id, n.id) AS old_person,
                   n.person_id, n.stitched_at,
                   CAST(least(o.stitched_at, n.stitched_at) AS DATE) - {config.stitch_lookback_days} AS since
            FROM silver.identity_map AS n
            FULL OUTER JOIN _hw_baseline AS o ON o.id = n.id
            WHERE coalesce(o.person_id, n.id) <> coalesce(n.person_id, o.id)
               OR o.stitched_at IS DISTINCT FROM n.stitched_at
            """
        )
        # A null stitched_at (a root, or no row) means the id is its own person on every day, so
        # a changed id has one on one side at least, and least() skips the null: its rows change
        # from the lookback of the earlier stitched_at on, never before.
        lo, hi = con.execute(
            """
            SELECT greatest(min(s.first_ds), (SELECT min(since) FROM _hw_changed)), max(s.last_ds)
            FROM silver.person_state AS s
            SEMI JOIN (SELECT old_person AS person_id FROM _hw_changed UNION SELECT id FROM _hw_changed) AS c USING (person_id)
            WHERE s.ds = CAST($state_ds AS DATE)
            """,
            {"state_ds": state_ds},
        ).fetchall()[0]
        if lo is None:  # no changed id's old person has a row: nothing stored to restate
            return []
        person = render("{{person_id}}", config)
        rows = con.execute(
            f"""
            SELECT DISTINCT e.ds
            FROM silver.events AS e
            JOIN _hw_changed AS m ON m.id = coalesce(e.user_id, e.anonymous_id)
            WHERE e.ds BETWEEN $lo AND $hi
              AND e.person_id IS DISTINCT FROM {person}
            ORDER BY e.ds
            """,
            {"lo": lo, "hi": hi},
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        con.unregister("_hw_baseline")
